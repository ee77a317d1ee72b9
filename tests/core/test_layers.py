"""Finding prunable layers, what is skipped and why, and the groups structured pruning removes."""

import pytest
import torch
from torch import nn

from core_models import (IMAGE, MODELS, make_attention_net, make_bn_cnn, make_concat_cnn, make_depthwise_cnn,
                      make_mlp, make_residual_cnn)
from prunelab.core.layers import find_layers
from prunelab.core.units import find_unit_groups


def groups_of(model, shape):
    layers, _ = find_layers(model)
    return find_unit_groups(model, layers, torch.randn(1, *shape))


def test_layers_are_named_by_qualified_module_name_in_module_order():
    layers, skipped = find_layers(make_residual_cnn())
    assert [l.name for l in layers] == ["stem", "a", "b", "head"]
    assert [l.kind for l in layers] == ["Conv2d", "Conv2d", "Conv2d", "Linear"]
    assert layers[0].shape == (6, 1, 3, 3) and layers[0].params == 54 and layers[0].units == 6
    assert skipped == {}


def test_nested_modules_get_dotted_names():
    model = nn.Sequential(nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU()), nn.Flatten(), nn.Linear(3 * 6, 2))
    layers, _ = find_layers(model)
    assert [(l.name, l.kind) for l in layers] == [("0.0", "Conv1d"), ("2", "Linear")]


def test_conv3d_is_prunable():
    layers, _ = find_layers(nn.Sequential(nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))
    assert layers[0].kind == "Conv3d" and layers[0].shape == (2, 1, 3, 3, 3)


def test_unprunable_parameters_are_skipped_with_a_reason():
    model = nn.ModuleDict({"emb": nn.Embedding(10, 4), "rnn": nn.GRU(4, 4), "att": nn.MultiheadAttention(4, 1),
                           "lazy": nn.LazyLinear(3), "fc": nn.Linear(4, 2)})
    layers, skipped = find_layers(model)
    assert [l.name for l in layers] == ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "att.in_proj_weight",
                                        "att.out_proj", "fc"]
    assert "Embedding" in skipped["emb"] and set(skipped) == {"emb", "lazy"}
    assert "forward pass" in skipped["lazy"]


def test_output_layer_is_blocked_for_structured_pruning():
    groups, blocked = groups_of(make_mlp(), (8,))
    assert set(groups) == {"0", "2"}
    assert "output" in blocked["4"]


def test_mlp_group_holds_the_row_bias_and_next_layer_columns():
    groups, _ = groups_of(make_mlp(), (8,))
    g = groups["0"]
    assert g.layers == ("0",) and g.units == 16
    assert {(s.param, s.dim) for s in g.slices} == {("0.weight", 0), ("0.bias", 0), ("2.weight", 1)}


def test_batchnorm_follows_its_convolution_and_flatten_maps_channels_to_columns():
    groups, _ = groups_of(make_bn_cnn(), IMAGE)
    assert groups["0"].params == {"0.weight", "0.bias", "1.weight", "1.bias", "3.weight"}
    g = groups["3"]
    assert g.params == {"3.weight", "3.bias", "4.weight", "4.bias", "8.weight"}
    columns = next(s for s in g.slices if s.param == "8.weight")
    # 6 channels flattened over a 4x4 map: channel c owns columns 16c .. 16c+15
    assert columns.dim == 1 and len(columns.index) == 96
    assert torch.equal(columns.root, torch.arange(96) // 16)


def test_residual_addition_couples_the_added_layers():
    groups, _ = groups_of(make_residual_cnn(), IMAGE)
    assert groups["stem"] is groups["b"]
    assert set(groups["stem"].layers) == {"stem", "b"}
    assert {"stem_bn.weight", "b_bn.weight", "a.weight", "head.weight"} <= groups["stem"].params
    assert groups["a"].layers == ("a",)


def test_concatenation_maps_each_branch_to_its_columns():
    groups, _ = groups_of(make_concat_cnn(), IMAGE)
    left = next(s for s in groups["left"].slices if s.param == "mix.weight")
    right = next(s for s in groups["right"].slices if s.param == "mix.weight")
    assert left.dim == right.dim == 1
    assert left.index.tolist() == [0, 1, 2]
    assert right.index.tolist() == [3, 4, 5, 6, 7]


def test_depthwise_convolution_is_coupled_to_the_layer_feeding_it():
    groups, _ = groups_of(make_depthwise_cnn(), IMAGE)
    assert groups["0"] is groups["2"]
    assert {"2.weight", "3.weight", "5.weight"} <= groups["0"].params


def test_grouped_convolution_blocks_the_layer_feeding_it():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    groups, blocked = groups_of(model, IMAGE)
    assert "grouped convolution" in blocked["0"]


def test_multihead_attention_blocks_structured_pruning_of_its_inputs():
    groups, blocked = groups_of(make_attention_net(), (5, 4))
    assert "MultiheadAttention" in blocked["embed"]
    assert "inside attn's fused MultiheadAttention forward" in blocked["attn.out_proj"]
    assert "attention heads" in blocked["attn.in_proj_weight"]
    assert set(blocked) == {"embed", "attn.in_proj_weight", "attn.out_proj", "head"}
    assert groups == {}


class RecurrentNet(nn.Module):
    """Embedding -> Linear -> GRU -> last step -> Linear: torch-pruning cannot follow ``pre``."""

    def __init__(self):
        super().__init__()
        self.emb, self.pre = nn.Embedding(20, 8), nn.Linear(8, 8)
        self.gru, self.head = nn.GRU(8, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, tokens):
        h, _ = self.gru(torch.relu(self.pre(self.emb(tokens))))
        return self.head(h[:, -1])


def test_recurrent_model_is_skipped_and_blocked_with_reasons_not_a_crash():
    from prunelab import Pruner

    torch.manual_seed(0)
    model = RecurrentNet()
    tokens, y = torch.randint(0, 20, (30, 5)), torch.arange(30) % 3
    pruner = Pruner(model, (tokens, y))
    assert pruner.layer_names == ["pre", "gru.weight_ih_l0", "gru.weight_hh_l0", "head"]
    assert "Embedding" in pruner.skipped["emb"] and "recurrent weight" in pruner.structured_blocked["gru.weight_hh_l0"]
    assert "torch-pruning could not follow its units" in pruner.structured_blocked["pre"]
    with pytest.raises(ValueError, match="no layer of this model can be pruned structurally"):
        pruner.prune(0.5, granularity="structured")
    pruner.prune(0.5)
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model.eval()(tokens))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_building_groups_leaves_the_model_as_it_was(name):
    build, shape = MODELS[name]
    model = build().train()
    frozen = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)][:1]
    for m in frozen:  # mixed modes (a frozen BatchNorm in a training model) must survive too
        m.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups_of(model, shape)
    assert {n: m.training for n, m in model.named_modules()} == modes
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
