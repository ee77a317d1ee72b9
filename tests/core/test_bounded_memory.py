"""Memory bounded by design: the evaluation's cache is planned before it runs and never passes its
budget at any moment of a pass (watched from inside the pass), whatever the number of samples; a
block holds only as many samples as its activation budget allows; the Pruner says what it holds."""

import pytest
import torch
from torch import nn

from core_models import IMAGE, make_bn_cnn, make_residual_cnn, random_data
from prunelab import Pruner
from prunelab.core.evaluation import Evaluator


def blockwise(model, x, blocks):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[b]) for b in blocks])


def watch(model, evaluator):
    """Record the evaluator's cached bytes at every module call of a pass (a hook, not after)."""
    seen = []
    for m in model.modules():
        if not list(m.children()):  # leaves: the traced graph calls them, so their hooks run in it
            m.register_forward_hook(lambda *a: seen.append(evaluator.cached_bytes))
    return seen


def unbounded_bytes(model, x, batch):
    ev = Evaluator(model, x, batch_size=batch, cache_bytes=2**40)
    ev.outputs()
    return ev.cached_bytes


@pytest.mark.parametrize("n", [64, 512])
def test_the_cache_never_passes_its_budget_during_a_pass(n):
    model = make_residual_cnn().eval()
    x, _ = random_data(IMAGE, n=n)
    everything = unbounded_bytes(model, x, 16)
    budget = everything // 3
    ev = Evaluator(model, x, batch_size=16, cache_bytes=budget)
    seen = watch(model, ev)
    first = ev.outputs()
    assert seen and max(seen) <= budget and ev.peak_cached_bytes <= budget
    assert 0 < ev.cached_bytes <= budget  # something was worth keeping, within the budget
    assert torch.equal(first, blockwise(model, x, ev.blocks))
    seen.clear()
    with torch.no_grad():
        model.head.weight.mul_(0.5)
    assert torch.equal(ev.outputs({"head"}), blockwise(model, x, ev.blocks))
    assert max(seen) <= budget


def test_the_cache_holds_the_same_budget_for_four_times_the_samples():
    model = make_bn_cnn().eval()
    budget = 64 * 2**10
    peaks = []
    for n in (128, 512):
        x, _ = random_data(IMAGE, n=n)
        ev = Evaluator(model, x, batch_size=32, cache_bytes=budget)
        ev.outputs()
        peaks.append(ev.peak_cached_bytes)
        assert unbounded_bytes(model, x, 32) > budget  # the budget bites
    assert max(peaks) <= budget


def test_a_tight_budget_still_gives_the_plain_outputs_after_every_change():
    model = make_residual_cnn().eval()
    x, _ = random_data(IMAGE, n=100)
    ev = Evaluator(model, x, batch_size=16, cache_bytes=4096)
    ev.outputs()
    for name in ("b", "stem", "head", "a"):
        with torch.no_grad():
            model.get_submodule(name).weight.mul_(0.9)
        assert torch.equal(ev.outputs({name}), blockwise(model, x, ev.blocks)), name
        assert ev.peak_cached_bytes <= 4096


def test_blocks_shrink_to_fit_their_activation_budget():
    model = make_bn_cnn().eval()
    x, _ = random_data(IMAGE, n=200)
    per_sample = 8 * 8 * 4  # the input alone, per sample: every block's activations are more than this
    ev = Evaluator(model, x, batch_size=1024, batch_bytes=20 * per_sample)
    out = ev.outputs()
    sizes = [b.stop - b.start for b in ev.blocks]
    assert sum(sizes) == 200 and max(sizes) < 20
    assert torch.equal(out, blockwise(model, x, ev.blocks))


def test_on_cpu_a_batch_keeps_its_activations_under_the_heaps_threshold_by_default():
    from prunelab.core.evaluation import BATCH_BYTES

    # 64 channels of 32x32 floats: 256 KiB a value per sample, a few such values live at once
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64 * 32 * 32, 10)).eval()
    x = torch.randn(600, 3, 32, 32)
    ev = Evaluator(model, x, batch_size=1024)
    out = ev.outputs()
    value = 64 * 32 * 32 * 4
    assert 1 < ev.group_cap <= BATCH_BYTES["cpu"] // value  # not the 1024 samples asked for: 256 MiB a value
    assert torch.allclose(out, blockwise(model, x, [slice(0, 600)]), atol=1e-5)


def test_a_batch_resuming_after_the_big_activations_holds_more_samples_in_the_same_budget():
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8), nn.Conv2d(64, 64, 3, padding=1),
                          nn.Flatten(), nn.Linear(64 * 4 * 4, 10)).eval()
    x = torch.randn(512, 3, 32, 32)
    batches = []
    model[3].register_forward_hook(lambda m, i, o: batches.append(len(i[0])))
    ev = Evaluator(model, x, batch_size=1024, batch_bytes=2**22)
    ev.outputs()
    early = max(batches)  # from the input: 256 KiB a sample for each 64x32x32 value
    batches.clear()
    with torch.no_grad():
        model[3].weight.mul_(0.5)
    out = ev.outputs({"3"})  # resumes at the pooled 64x4x4 values: 4 KiB a sample
    assert max(batches) >= 8 * early and early <= 16
    assert torch.allclose(out, blockwise(model, x, [slice(0, 512)]), atol=1e-5)


def test_an_untraceable_model_also_runs_in_bounded_blocks():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 3)

        def forward(self, x):
            h = self.a(x.flatten(1))
            if h.sum() > 1e9:  # data-dependent control flow: fx cannot trace it
                h = -h
            return self.b(h)

    model = Branchy().eval()
    x, _ = random_data(IMAGE, n=300)
    ev = Evaluator(model, x, batch_size=1024, batch_bytes=64 * 2**10)
    assert not ev.incremental
    out = ev.outputs()
    assert len(ev.blocks) > 1 and torch.equal(out, blockwise(model, x, ev.blocks))


def test_the_pruner_says_what_it_holds(image_data):
    pruner = Pruner(make_bn_cnn(), image_data, cache_bytes=2**20)
    params = sum(p.numel() * p.element_size() for p in pruner.model.parameters())
    held = pruner.memory()
    assert held.weights_copy == params and held.caches == 0 and held.scores == 0
    pruner.prune(0.5, criterion="taylor")  # scores (held: magnitude's are not, tests/core/test_holdings.py), plans
    pruner.evaluate()
    held = pruner.memory()
    assert held.scores > 0 and held.plans > 0 and held.outputs > 0
    assert 0 < held.caches <= held.cache_budget == 2**20
    assert held.total == held.weights_copy + held.plans + held.caches + held.outputs + held.scores
    assert "total" in str(held.table())


def test_cache_bytes_is_checked():
    x, y = random_data(IMAGE)
    with pytest.raises(ValueError, match="cache_bytes"):
        Pruner(make_bn_cnn(), (x, y), cache_bytes=-1)


def test_the_cut_kept_is_the_one_that_saves_most_relative_to_each_moves_tail():
    from prunelab.core.blocking import choose_cuts

    # ten nodes of a second each; cut points 2..9, and the budget holds one of the cheap cuts, 2 or 9
    cuts = {c: [c] for c in range(2, 10)}
    cost = {c: 10 if c in (2, 9) else 1000 for c in cuts}
    kept = choose_cuts(cuts, 10, cost, [1.0] * 10, budget=10, inplace=False)
    # cut 2 saves 2 s for all eight moves (16 s in all); cut 9 saves 9 s for one move, whose tail
    # is 1 s: without it that move waits 10x its tail, with cut 2 8x; the others gain a third at most
    assert kept == {9}
