"""A first answer within a time budget: ``evaluate(time_budget=s)`` measures a prefix of a fixed,
class-stratified, seeded order, says how many samples of how many, with the 95% interval, and a
later call on the same state continues from where it stopped; without a budget, everything."""

import time

import pytest
import torch

from core_models import IMAGE, make_residual_cnn, random_data
from prunelab import Pruner
from prunelab.core import meter
from prunelab.core.data import stratified_order, stratified_subset
from prunelab.core.evaluation import Evaluator


@pytest.fixture
def big(monkeypatch):
    """Every model counts as big: measured progressively, in the stratified order."""
    monkeypatch.setattr(meter, "PROGRESSIVE_FLOPS", 0)


def plain(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_every_prefix_of_the_order_is_stratified_and_the_subset_is_its_prefix():
    y = torch.arange(300) % 3
    order = stratified_order(y, seed=5)
    assert sorted(order.tolist()) == list(range(300))
    for n in (3, 30, 150):
        assert torch.bincount(y[order[:n]], minlength=3).tolist() == [n // 3] * 3
        assert torch.equal(order[:n].sort().values, stratified_subset(y, n, seed=5))
    assert torch.equal(order, stratified_order(y, seed=5)) and not torch.equal(order, stratified_order(y, seed=6))


def test_a_first_answer_on_a_few_samples_then_refined_to_the_full_result(big):
    x, y = random_data(IMAGE, n=300, classes=3)
    pruner = Pruner(make_residual_cnn(), (x, y))
    pruner.prune(0.5)
    first = pruner.evaluate(time_budget=0.0)  # no time at all: still the first block
    assert (first.samples, first.of, first.complete) == (2, 300, False)
    lo, hi = first.accuracy_interval
    assert lo <= first.accuracy <= hi and hi - lo > 0.3  # two samples say little, and it shows
    assert "2 of 300" in str(first) and "refining" in str(first)
    second = pruner.evaluate(time_budget=0.0)  # continues: the next block, not the first again
    assert (second.samples, second.of) == (4, 300)
    full = pruner.evaluate()
    assert (full.samples, full.of, full.complete) == (300, 300, True)
    expected = int((plain(pruner.model, x).argmax(1) == y).sum()) / 300
    assert full.accuracy == pytest.approx(expected, abs=1e-9)
    assert pruner.evaluate(time_budget=0.0) == full  # complete: cached for the state


def test_refining_never_measures_a_sample_twice(big):
    x, y = random_data(IMAGE, n=120, classes=3)
    pruner = Pruner(make_residual_cnn(), (x, y))
    seen = []
    pruner.model.stem.register_forward_hook(lambda m, i, o: seen.append(len(o)))
    pruner.evaluate()  # FLOPs counted and blocks planned (on one and two samples) once
    pruner.prune({"stem": 0.5})  # the first layer: every sample runs through it
    seen.clear()
    m = pruner.evaluate(time_budget=0.0)
    while not m.complete:
        m = pruner.evaluate(time_budget=0.0)
    assert sum(seen) == 120 and m.samples == 120


def test_a_change_starts_the_new_state_over_on_the_first_samples(big):
    x, y = random_data(IMAGE, n=200, classes=3)
    pruner = Pruner(make_residual_cnn(), (x, y))
    pruner.evaluate(time_budget=0.0)
    pruner.evaluate(time_budget=0.0)
    pruner.prune({"head": 0.5})
    m = pruner.evaluate(time_budget=0.0)
    assert m.samples == 2
    # a later layer changed, so its measured prefix reuses the cached activations and matches a plain run
    ev = Evaluator(pruner.model, x, batch_size=1024, order=stratified_order(y, 0), progressive=True)
    index, out = ev.run(deadline=0.0)
    assert torch.equal(index, stratified_order(y, 0)[:2])
    assert torch.allclose(out, plain(pruner.model, x[index]), atol=1e-6)


def test_a_generous_budget_measures_everything_within_it(big):
    x, y = random_data(IMAGE, n=200, classes=3)
    pruner = Pruner(make_residual_cnn(), (x, y))
    began = time.perf_counter()
    m = pruner.evaluate(time_budget=30.0)
    assert m.complete and m.samples == 200 and time.perf_counter() - began < 30.0


def test_a_cheap_model_is_always_measured_whole(image_data):
    pruner = Pruner(make_residual_cnn(), image_data)
    m = pruner.evaluate(time_budget=0.0)
    assert m.complete and m.samples == m.of == len(image_data[0])


def test_the_progressive_order_gives_the_plain_outputs_in_the_data_order(big):
    x, y = random_data(IMAGE, n=90, classes=3)
    pruner = Pruner(make_residual_cnn(), (x, y))
    assert torch.allclose(pruner.outputs(), plain(pruner.model, x), atol=1e-6)
    pruner.prune({"b": 0.5})
    assert torch.allclose(pruner.outputs(), plain(pruner.model, x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_budgeted_and_full_evaluations_run_on_the_model_device(big):
    x, y = random_data(IMAGE, n=300, classes=3)
    pruner = Pruner(make_residual_cnn().cuda(), (x.cuda(), y.cuda()), cache_bytes=2**20)
    pruner.prune(0.5)
    first = pruner.evaluate(time_budget=0.0)
    assert first.samples == 2 and not first.complete
    full = pruner.evaluate()
    assert full.complete
    out = pruner.outputs()
    assert out.device.type == "cuda"
    assert torch.allclose(out, plain(pruner.model, x.cuda()), atol=1e-4)
    assert pruner.memory().caches <= 2**20
    pruner.prune({"head": 0.7})
    assert torch.allclose(pruner.outputs(), plain(pruner.model, x.cuda()), atol=1e-4)
