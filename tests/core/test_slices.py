"""Short slices at any model size, full batches when the time allows: a progressive evaluation plans
blocks whose full pass takes about ``block_seconds`` (timed on its probe), so a deadline stops soon
after it, and runs consecutive blocks as one batch (up to the memory cap) when the deadline, or no
deadline, allows, with the same outputs as a plain forward."""

import time

import pytest
import torch
from torch import nn

from prunelab.core.data import stratified_order
from prunelab.core.evaluation import Evaluator

PER_SAMPLE = 0.004  # seconds the slow layer takes per sample (a sleep: the same on a loaded machine)
BATCHES: list[int] = []  # the batch sizes the slow layer ran


@torch.fx.wrap
def nap(x):
    BATCHES.append(len(x))
    time.sleep(PER_SAMPLE * len(x))
    return x


class Slow(nn.Module):
    """A layer whose time grows with the batch (called as a function in the traced graph)."""

    def forward(self, x):
        return nap(x)


class Untraceable(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(-x if x.sum() > 1e9 else x)  # data-dependent: fx cannot trace it


def slow_model(traced=True):
    torch.manual_seed(0)
    BATCHES.clear()
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), Slow(), nn.Linear(32, 3))
    return (model if traced else Untraceable(model)).eval()


def plain(model, x):
    with torch.no_grad():
        return model(x)


def evaluator(model, x, y, **kw):
    return Evaluator(model, x, batch_size=64, order=stratified_order(y, 0), progressive=True,
                     block_seconds=0.04, **kw)


def data(n=240):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.arange(n) % 3


@pytest.mark.parametrize("traced", [True, False])
def test_blocks_are_capped_by_their_measured_time_and_a_full_run_joins_them(traced):
    model, (x, y) = slow_model(traced), data()
    ev = evaluator(model, x, y)
    assert ev.incremental == traced
    out = ev.outputs()
    sizes = [len(b) for b in ev.blocks]
    assert sum(sizes) == len(x) and max(sizes) <= 0.04 / PER_SAMPLE  # no block longer than its time
    assert max(BATCHES) > max(sizes)  # ... but the full run ran them in bigger batches
    assert max(BATCHES) <= 64  # never past the batch cap
    assert torch.allclose(out, plain(model, x), atol=1e-6)


def test_a_deadline_stops_within_about_one_block_at_any_size():
    model, (x, y) = slow_model(), data()
    ev = evaluator(model, x, y)
    ev.run(deadline=0.0)  # plans (the probe) and measures the first block
    overshoot = []
    while ev.measured < len(x):
        began = time.perf_counter()
        ev.run(set(), deadline=began + 0.1)
        overshoot.append(time.perf_counter() - began - 0.1)
    assert len(overshoot) > 3  # a slice each time, not everything at once
    assert max(overshoot) < 0.04 + 0.1  # at most about one block past the deadline (plus a loaded machine)
    assert torch.allclose(ev.outputs(set()), plain(model, x), atol=1e-6)


def test_joined_blocks_cache_their_own_parts_and_a_later_move_resumes_from_them():
    model, (x, y) = slow_model(), data()
    ev = evaluator(model, x, y, cache_bytes=2**30)
    ev.outputs()
    assert ev.cached_bytes > 0
    BATCHES.clear()
    with torch.no_grad():
        model[4].weight.mul_(0.5)
    out = ev.outputs({"4"})
    assert BATCHES == []  # resumed after the slow layer: nothing before the change ran again
    assert torch.allclose(out, plain(model, x), atol=1e-6)
    assert ev.peak_cached_bytes <= 2**30


def test_a_move_resumes_in_the_batches_it_stored_and_joins_them_without_a_copy(monkeypatch):
    from prunelab.core import evaluation

    model, (x, y) = slow_model(), data()
    ev = evaluator(model, x, y, cache_bytes=2**30)
    ev.outputs()  # blocks of a few samples, run (and cached) in batches of up to 64
    joins = []  # (blocks joined, whether the result shares the cached memory)
    real_join = evaluation.join
    monkeypatch.setattr(evaluation, "join", lambda values, clone: joins.append(
        (len(values), (j := real_join(values, clone)).data_ptr() == values[0].data_ptr())) or j)
    with torch.no_grad():
        model[4].weight.mul_(0.5)
    out = ev.outputs({"4"})
    assert max(n for n, _ in joins) > 1 and all(view for _, view in joins)  # batches read as views: no copy
    assert torch.allclose(out, plain(model, x), atol=1e-6)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_parts_of_one_batch_join_as_a_view_and_others_are_copied(layout):
    from prunelab.core.blocking import join

    batch = torch.randn(6, 3, 4, 4).contiguous(memory_format=layout)
    parts = list(batch.split([2, 1, 3]))
    joined = join(parts, clone=False)
    assert torch.equal(joined, batch) and joined.data_ptr() == batch.data_ptr()  # no copy
    apart = join([parts[0], parts[2]], clone=False)  # not neighbours: copied
    assert torch.equal(apart, torch.cat([parts[0], parts[2]])) and apart.data_ptr() != batch.data_ptr()
    assert join(parts, clone=True).data_ptr() != batch.data_ptr()  # a copy when asked for
