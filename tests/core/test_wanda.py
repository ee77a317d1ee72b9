"""criterion="wanda": |w| x the L2 norm of each weight's input feature over the scoring data
(Sun et al. 2023), checked against a plain loop over samples and features."""

import copy
import math

import pytest
import torch
from torch import nn

from core_models import IMAGE, TOKENS, assert_same_state, make_attention_net, make_depthwise_cnn, random_data, state_of
from prunelab import Pruner, Wanda
from prunelab.core.criteria import CRITERIA, ScoringContext, get_criterion
from prunelab.core.layers import find_layers
from prunelab.core.modes import forward_hooks


def feature_norms_by_loop(rows: torch.Tensor) -> list[float]:
    """||X_j|| for each column j of ``rows`` (one row per sample or patch), one number at a time."""
    out = []
    for j in range(rows.shape[1]):
        total = 0.0
        for i in range(rows.shape[0]):
            total += float(rows[i, j]) ** 2
        out.append(math.sqrt(total))
    return out


def mlp_reference(mlp, x):
    """|w| x ||X_j|| for the core MLP (Linear 0, ReLU, Linear 2, ReLU, Linear 4), by hand."""
    inputs = {"0": x, "2": torch.relu(mlp[0](x)), "4": torch.relu(mlp[2](torch.relu(mlp[0](x))))}
    out = {}
    for name, inp in inputs.items():
        norms = torch.tensor(feature_norms_by_loop(inp.detach()))
        out[name] = mlp.get_submodule(name).weight.detach().abs() * norms[None, :]
    return out


def conv_reference(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """|w| x ||patch column|| for one Conv2d (groups=1), from torch's own unfold of the padded input."""
    pad = conv.padding
    if conv.padding_mode != "zeros":
        x = nn.functional.pad(x, (pad[1], pad[1], pad[0], pad[0]), mode=conv.padding_mode)
        pad = 0
    cols = nn.functional.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # one row per patch, (channel, kernel pos) columns
    norms = torch.tensor(feature_norms_by_loop(rows)).reshape(conv.weight.shape[1:])
    return conv.weight.detach().abs() * norms[None]


def context(model, x):
    layers, _ = find_layers(model)
    return ScoringContext(model, layers, lambda: [(x[:20], None), (x[20:], None)], None, False)


def test_wanda_is_registered_and_resolves_by_name():
    assert CRITERIA["wanda"] is Wanda
    assert isinstance(get_criterion("wanda"), Wanda) and not get_criterion("wanda").per_row
    assert repr(Wanda(per_row=True)) == "Wanda(per_row=True)"
    with pytest.raises(TypeError, match="True or False"):
        Wanda(per_row="yes")


def test_linear_scores_are_weight_times_input_norm_over_all_scoring_samples(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    reference = mlp_reference(mlp, mlp_data[0])  # the 48 samples are all scored on
    scores = pruner.scores("wanda")
    units = pruner.scores("wanda", units=True)
    for name in pruner.layer_names:
        assert torch.allclose(scores[name], reference[name], rtol=1e-4, atol=1e-6), name
        assert torch.allclose(units[name], reference[name].sum(1), rtol=1e-4, atol=1e-5), name
    # the input norms change the order: not the same ranking as magnitude
    magnitude = pruner.scores("magnitude")
    assert any(not torch.equal(scores[n].flatten().argsort(), magnitude[n].flatten().argsort())
               for n in pruner.layer_names)


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 4, 3, padding=1),
    nn.Conv2d(3, 5, 3, stride=2, dilation=2, padding=2),
    nn.Conv2d(3, 4, (3, 2), padding=1, padding_mode="reflect"),
    nn.Conv2d(3, 4, 1),
], ids=["padded", "strided-dilated", "reflect", "pointwise"])
def test_conv_scores_use_the_norms_of_the_unfolded_patches(conv):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 7, 7)
    got = Wanda().weight_scores(context(conv, x))[""]
    assert torch.allclose(got, conv_reference(conv, x), rtol=1e-4, atol=1e-6)


def test_conv1d_same_padding_and_groups_match_the_loop():
    torch.manual_seed(0)
    x = torch.randn(40, 4, 9)
    conv = nn.Conv1d(4, 6, 4, padding="same", groups=2)
    got = Wanda().weight_scores(context(conv, x))[""]
    # 'same' with an even kernel pads 1 left and 2 right (as torch does); group g sees channels 2g, 2g+1
    padded = nn.functional.pad(x, (1, 2))
    windows = padded.unfold(2, 4, 1)  # (n, channel, position, kernel pos)
    for out_ch in range(6):
        group = out_ch // 3
        rows = windows[:, 2 * group:2 * group + 2].permute(0, 2, 1, 3).reshape(-1, 8)
        norms = torch.tensor(feature_norms_by_loop(rows)).reshape(2, 4)
        assert torch.allclose(got[out_ch], conv.weight[out_ch].detach().abs() * norms, rtol=1e-4, atol=1e-6)


def test_global_and_per_layer_pruning_follow_the_scores(mlp, mlp_data):
    reference = mlp_reference(mlp, mlp_data[0])
    pruner = Pruner(mlp, mlp_data).prune(0.6, criterion="wanda")
    pruned = torch.cat([reference[n][~pruner.mask(n)] for n in pruner.layer_names])
    kept = torch.cat([reference[n][pruner.mask(n)] for n in pruner.layer_names])
    # global: one ranking across layers, the lowest |w| x ||X|| of the whole model go first
    assert pruned.numel() == round(0.6 * (pruned.numel() + kept.numel()))
    assert pruned.max() <= kept.min()
    pruner.prune(0.5, criterion="wanda", scope="layer")
    for n in pruner.layer_names:
        kept = reference[n][pruner.mask(n)]
        pruned = reference[n][~pruner.mask(n)]
        assert pruned.numel() == reference[n].numel() // 2 and pruned.max() <= kept.min(), n


def test_per_row_prunes_the_same_fraction_of_every_output_row(mlp, mlp_data):
    reference = mlp_reference(mlp, mlp_data[0])
    dense = copy.deepcopy(mlp)
    pruner = Pruner(mlp, mlp_data)
    for scope in ("layer", "global"):
        pruner.prune(0.5, criterion=Wanda(per_row=True), scope=scope)
        for n in pruner.layer_names:
            mask, ref = pruner.mask(n), reference[n]
            pruned_per_row = (~mask).sum(1)
            assert int(pruned_per_row.max() - pruned_per_row.min()) <= 1, (scope, n)
            assert abs(float(pruned_per_row.float().mean()) - 0.5 * ref.shape[1]) <= 1, (scope, n)
            for row in range(ref.shape[0]):  # within a row, the lowest |w| x ||X|| go first
                if (~mask[row]).any() and mask[row].any():
                    assert ref[row][~mask[row]].max() <= ref[row][mask[row]].min()
    # the plain ranking, per layer, does not spread the cut evenly over the rows
    plain = Pruner(dense, mlp_data).prune(0.5, criterion="wanda", scope="layer")
    assert any(int((~plain.mask(n)).sum(1).max() - (~plain.mask(n)).sum(1).min()) > 1 for n in plain.layer_names)


def test_structured_pruning_removes_the_units_with_the_lowest_row_sums(mlp, mlp_data):
    reference = mlp_reference(mlp, mlp_data[0])
    pruner = Pruner(mlp, mlp_data).prune(0.5, criterion="wanda", granularity="structured", scope="layer")
    for n, plan in pruner.plans.items():
        if plan is None or plan.granularity != "structured":
            continue
        sums = reference[n].sum(1)
        assert sums[~plan.keep].max() <= sums[plan.keep].min(), n


def test_scoring_leaves_the_model_untouched():
    model = make_depthwise_cnn()
    model.eval()
    model[3].train()  # a BatchNorm in train mode: scoring must not move its running stats
    before, hooks = state_of(model), forward_hooks(model)
    modes = [m.training for m in model.modules()]
    scores = Wanda().weight_scores(context(model, random_data(IMAGE)[0]))
    assert_same_state(model, before)
    assert forward_hooks(model) == hooks == {}
    assert [m.training for m in model.modules()] == modes
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in scores.values())


def test_a_layer_the_forward_never_calls_is_ranked_by_magnitude():
    model = make_attention_net()
    x, y = random_data(TOKENS)
    pruner = Pruner(model, (x, y))
    scores = pruner.scores("wanda")
    uncalled = [l for l in pruner.layers if l.name.endswith("out_proj")]
    assert uncalled, "the attention net has an out_proj run inside a functional call"
    for l in uncalled:
        ratio = scores[l.name] / l.module.weight.detach().abs().clamp_min(1e-12)
        assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-4)
    pruner.prune(0.5, criterion="wanda")
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)


def test_wanda_beats_magnitude_one_shot_at_90_percent_on_the_mlp_demo(mlp_demo):
    magnitude = Pruner(copy.deepcopy(mlp_demo.model), mlp_demo.val, train_data=mlp_demo.train).prune(0.9)
    wanda = Pruner(mlp_demo.model, mlp_demo.val, train_data=mlp_demo.train).prune(0.9, criterion="wanda")
    assert wanda.evaluate().accuracy > magnitude.evaluate().accuracy + 0.05
