"""measure_latency: honest timing that leaves torch and the models as it found them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunelab as pl


class Counting(nn.Module):
    """Counts its forward passes, and whether each ran in eval mode without autograd."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.lin = nn.Linear(4, 2)
        self.calls, self.modes, self.fail_after = 0, set(), fail_after

    def forward(self, x):
        self.calls += 1
        self.modes.add((self.training, torch.is_grad_enabled()))
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("boom")
        return self.lin(x)


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_runs_warmup_and_repeats_in_eval_mode_and_restores_everything(threads):
    a, b = Counting().train(), Counting().eval()
    wanted = 2 if threads == 1 else 1  # differ from the current setting, so restoring is seen
    seen = []
    a.register_forward_pre_hook(lambda m, i: seen.append(torch.get_num_threads()))
    result = pl.measure_latency({"a": a, "b": b}, torch.randn(3, 4), threads=wanted, warmup=2, repeats=5)
    assert a.calls == b.calls == 2 + 5 and a.modes == b.modes == {(False, False)}
    assert set(seen) == {wanted}  # timed at the threads asked for
    assert torch.get_num_threads() == threads  # and restored
    assert a.training and not b.training  # each model's own mode is back
    for lat in result.values():
        assert (lat.repeats, lat.batch, lat.threads) == (5, 3, wanted)
        assert 0 < lat.q1 <= lat.median <= lat.q3


def test_one_repeat_is_its_own_median():
    lat = pl.measure_latency({"m": Counting()}, torch.randn(2, 4), warmup=0, repeats=1)["m"]
    assert lat.q1 == lat.median == lat.q3 and lat.repeats == 1


@pytest.mark.parametrize("repeats", [0, -3])
def test_fewer_than_one_repeat_is_refused(repeats):
    model = Counting()
    with pytest.raises(ValueError, match=f"repeats must be at least 1, got {repeats}"):
        pl.measure_latency({"m": model}, torch.randn(2, 4), repeats=repeats)
    assert model.calls == 0


def test_a_failing_model_still_restores_threads_and_modes(threads):
    good, bad = Counting().train(), Counting(fail_after=3).train()
    other = 2 if threads == 1 else 1
    with pytest.raises(RuntimeError, match="boom"):
        pl.measure_latency({"good": good, "bad": bad}, torch.randn(2, 4), threads=other, warmup=2, repeats=5)
    assert torch.get_num_threads() == threads
    assert good.training and bad.training
