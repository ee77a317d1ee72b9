"""A big model in the explorer, inside a running event loop as in a Jupyter kernel: a slider move
shows a first measured readout at once ("on N of M samples, refining"), the rest is measured in
short slices between which the loop answers, a newer move drops the older refinement, and
Taylor scores on a subset the user sets run in the background with progress.

The model is an MLP wide enough to be measured progressively (over 2e10 FLOPs a full pass),
followed by an op that sleeps 2.5 ms per sample: a full evaluation takes over 3 s, yet the test
uses little CPU (two shared cores)."""

from __future__ import annotations

import asyncio
import copy
import time

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.core.scores import scoring_context, scoring_samples
from prunelab.explorer.app import Explorer
from prunelab.explorer.background import counting
from prunelab.explorer.state import SLICE_S
from prunelab.explorer.views.metrics import measured_on

SLEEP_PER_SAMPLE = 0.0025
SAMPLES = 1200
PAUSE_S = 1.0  # the longest the loop may pause while measuring or scoring runs (a frozen kernel: the whole 3.5 s)


@torch.fx.wrap
def slow(x):
    """A stand-in for a big model's cost: sleeps per sample (kept in the fx graph as one call)."""
    time.sleep(SLEEP_PER_SAMPLE * x.shape[0])
    return x


class SlowWide(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(256, 4096), nn.ReLU(), nn.Linear(4096, 2048), nn.ReLU(),
                                  nn.Linear(2048, 10))

    def forward(self, x):
        return slow(self.body(x))


@pytest.fixture(scope="module")
def big():
    torch.manual_seed(0)
    model = SlowWide().eval()
    x = torch.randn(SAMPLES, 256)
    with torch.no_grad():
        y = (model.body(x) + 0.5 * torch.randn(SAMPLES, 10)).argmax(1)  # its own labels, blurred
    return model, x, y


@pytest.fixture
def big_pruner(big):
    """A Pruner on a copy of the big model, measuring blocks of at most 32 samples (80 ms of sleep)."""
    model, x, y = big
    pruner = pl.Pruner(copy.deepcopy(model), (x, y), batch_size=32)
    yield pruner
    pruner.close()


def live(coro_fn):
    """Run ``coro_fn()`` in a fresh event loop on this thread (the Scheduler takes it for a kernel's)."""
    return asyncio.run(coro_fn())


async def until(check, timeout: float, step: float = 0.005) -> float:
    """Seconds until ``check()`` is true, letting the loop run; raises after ``timeout``."""
    began = time.perf_counter()
    while not check():
        if time.perf_counter() - began > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(step)
    return time.perf_counter() - began


class Gaps:
    """The longest the loop went without running a 10 ms ticker: how long a widget waits at most."""

    def __init__(self):
        self.longest, self._last, self._stop = 0.0, None, False

    async def run(self):
        self._last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0.01)
            if self._stop:  # what ran after stop() (a result landing, say) is not counted
                break
            now = time.perf_counter()
            self.longest = max(self.longest, now - self._last - 0.01)
            self._last = now

    def stop(self):
        self._stop = True


def test_a_move_on_a_big_model_shows_a_first_readout_at_once_and_the_full_one_later(big, big_pruner, capsys):
    model, x, y = big
    pruner = big_pruner
    plain = time.perf_counter()
    with torch.no_grad():
        for chunk in x.split(32):
            model(chunk)
    plain = time.perf_counter() - plain
    numbers = {}

    async def scenario():
        began = time.perf_counter()
        ex = Explorer(pruner)
        numbers["open_s"] = time.perf_counter() - began
        assert not ex.state.metrics.complete and ex.live.refining  # opened on a first answer
        numbers["open_samples"] = ex.state.metrics.samples
        await until(lambda: ex.state.metrics.complete, 60)  # the dense state, refined in slices
        assert ex.state.baseline.complete  # the baseline followed the dense state's refinement
        readout = ex.views["metrics"].readout
        shown = []  # when the readout changed, and to what (the page gets it then, before the views)
        readout.observe(lambda c: shown.append((time.perf_counter(), c["new"], ex.state.metrics)), "value")
        move_gaps = Gaps()
        ticker = asyncio.ensure_future(move_gaps.run())
        await asyncio.sleep(0.05)
        began = time.perf_counter()
        ex.controls.layer_sliders["body.4"].value = 0.5  # a slider move, as a person makes it
        await until(lambda: ex.live.refining, 10)
        move_gaps.stop()
        await ticker
        numbers["move_gap_s"] = move_gaps.longest  # the move itself: ranking, views redrawn (not measuring)
        at, text, first = next(t for t in shown if "refining" in t[1])
        numbers["first_s"] = at - began
        gaps = Gaps()
        ticker = asyncio.ensure_future(gaps.run())
        numbers["first"] = measured_on(first)
        assert measured_on(first) in text and "subset" not in text
        assert 0 < first.samples < first.of == SAMPLES and first.accuracy_interval is not None
        lo, hi = first.accuracy_interval
        assert lo <= first.accuracy <= hi
        slices = ex.live.slices
        await until(lambda: ex.state.metrics.complete, 60)
        numbers["full_s"] = time.perf_counter() - began
        gaps.stop()
        await ticker
        numbers["longest_gap_s"] = gaps.longest
        numbers["slices"] = ex.live.slices - slices + 1
        full = ex.state.metrics
        await until(lambda: "refining" not in readout.value, 1)  # the readout is paced (READOUT_S): it follows within it
        assert full.samples == SAMPLES
        assert f"on {SAMPLES:,} validation samples" in readout.value
        assert full == pruner.evaluate()  # the refined result is the whole measurement
        ex.close()

    live(scenario)
    with capsys.disabled():
        print(f"\n  plain forward {plain:.2f} s; explorer opened in {numbers['open_s']:.2f} s on "
              f"{numbers['open_samples']} samples; move: first readout {numbers['first_s']:.2f} s "
              f"({numbers['first']}), full {numbers['full_s']:.2f} s in {numbers['slices']} slices; "
              f"the loop's longest pause while refining {numbers['longest_gap_s'] * 1000:.0f} ms "
              f"(while the move itself was handled: {numbers['move_gap_s'] * 1000:.0f} ms)")
    assert plain > 2.0  # the model is as slow as meant
    assert numbers["first_s"] < 1.5  # bench/scale.py's target for a first readout
    assert numbers["full_s"] > numbers["first_s"] + 1.0 and numbers["slices"] > 5
    # a slice is its budget plus at most one block of 32 samples (80 ms of sleep): widgets answer
    assert numbers["longest_gap_s"] < PAUSE_S


def test_a_newer_move_drops_the_older_refinement(big_pruner):
    pruner = big_pruner
    seen = []

    async def scenario():
        ex = Explorer(pruner)
        await until(lambda: ex.state.metrics.complete, 60)
        ex.state.observe(lambda c: seen.append((ex.pruner.sparsity()["body.4"], c["new"].samples)), "metrics")
        slider = ex.controls.layer_sliders["body.4"]
        slider.value = 0.3
        await until(lambda: ex.pruner.plans and ex.live.refining, 5)
        await asyncio.sleep(0.4)  # a few slices of the first move
        partial = ex.state.metrics
        assert not partial.complete
        dropped = ex.live.dropped
        slider.value = 0.8
        await until(lambda: ex.state.metrics.complete, 60)
        assert ex.live.dropped == dropped + 1
        await asyncio.sleep(0.3)  # nothing of the first move arrives late
        ex.close()
        return partial

    partial = live(scenario)
    first = [n for s, n in seen if abs(s - 0.3) < 0.01]
    second = [n for s, n in seen if abs(s - 0.8) < 0.01]
    assert first and partial.samples <= max(first) < SAMPLES  # the first move was never finished
    since = next(i for i, (s, n) in enumerate(seen) if abs(s - 0.8) < 0.01)
    assert all(abs(s - 0.8) < 0.01 for s, n in seen[since:])  # nothing of the first arrived after the second
    assert second[-1] == SAMPLES and seen[-1][0] == pytest.approx(0.8, abs=0.01)
    assert second == sorted(second)  # the second move's measurement only grew


def test_taylor_scores_run_on_the_subset_set_with_progress_while_the_loop_answers(big_pruner):
    pruner = big_pruner
    progress = []

    async def scenario():
        ex = Explorer(pruner, score_samples=64)
        bar = ex.progress.children[1]
        bar.observe(lambda c: progress.append((ex.state.busy, c["new"])), "value")
        ex.state.criterion = "taylor"  # taylor scores are wanted now (for weights: a second job)
        gaps = Gaps()  # from now until the weight scores land (the views redraw then: not scoring)
        ticker = asyncio.ensure_future(gaps.run())
        ex.state.observe(lambda c: "taylor" in c["new"] and gaps.stop(), "scores")
        await until(lambda: "taylor" in ex.state.scores, 60)
        await ticker
        await until(lambda: not ex.state.busy, 60)
        ex.close()
        return gaps.longest

    longest = live(scenario)
    # the scores the sliders prune by are those of the first 64 samples, not of all 1,200
    with pruner.dense():
        on_64 = pl.Taylor().unit_scores(scoring_context(pruner, *scoring_samples(pruner, 64)))
        on_all = pl.Taylor().unit_scores(scoring_context(pruner, *scoring_samples(pruner, SAMPLES)))
    held = pruner.scores("taylor", units=True)
    assert all(torch.allclose(held[n], on_64[n], rtol=1e-4, atol=1e-7) for n in held)
    assert not all(torch.allclose(held[n], on_all[n], rtol=1e-4, atol=1e-7) for n in held)
    assert any("taylor" in busy and 0 < f < 1 for busy, f in progress)  # progress shown part way
    assert longest < PAUSE_S  # the loop kept answering while scoring (and refining) ran


def test_counting_reports_progress_per_batch():
    reported = []
    batches = counting(lambda: iter([1, 2, 3, 4]), passes=2, progress=reported.append)
    assert list(batches()) == [1, 2, 3, 4] and list(batches()) == [1, 2, 3, 4]
    assert reported == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 0.99]


def test_score_samples_must_be_a_positive_count(big):
    model, x, y = big
    with pytest.raises(ValueError, match="score_samples must be a positive whole number"):
        pl.explore(model, (x[:64], y[:64]), score_samples=0)
