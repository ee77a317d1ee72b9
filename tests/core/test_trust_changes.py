"""Trust, the changes (issue 10, case 5 and "every change is a transaction"): bad scores are
refused before a step is recorded, and a change that fails part way, a KeyboardInterrupt
included, leaves the model, the history and the measurements as they were."""

import pytest
import torch

import prunelab as pl
from core_models import assert_same_state, make_mlp, state_of
from prunelab import Pruner
from prunelab.core.maskstate import MaskState


def snapshot(pruner):
    return state_of(pruner.model), pruner.history.cursor, len(pruner.history), pruner.sparsity(), pruner.masks()


def assert_unchanged(pruner, snap):
    state, cursor, steps, sparsity, masks = snap
    assert_same_state(pruner.model, state)
    assert (pruner.history.cursor, len(pruner.history), pruner.sparsity()) == (cursor, steps, sparsity)
    assert masks.keys() == pruner.masks().keys() and all(torch.equal(m, pruner.masks()[k]) for k, m in masks.items())


class Scores(pl.Criterion):
    """A custom criterion returning whatever ``change`` makes of magnitude's scores."""

    name = "custom"

    def __init__(self, change):
        self.change = change

    def weight_scores(self, ctx):
        return self.change({l.name: l.module.weight.detach().abs() for l in ctx.layers})


BAD_SCORES = {
    "wrong shape": (lambda s: {**s, "2": s["2"].flatten()}, r"criterion 'custom'.*layer '2' shaped \(192,\).*\(12, 16\)"),
    "a layer left out": (lambda s: {k: v for k, v in s.items() if k != "4"}, r"criterion 'custom'.*no scores for layers \['4'\]"),
    "NaN": (lambda s: {**s, "0": s["0"].index_fill(0, torch.tensor([1]), float("nan"))},
            r"criterion 'custom'.*8 non-finite scores.*layer '0'"),
    "not a dict": (lambda s: list(s.values()), r"criterion 'custom'.*returned list"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCORES))
@pytest.mark.parametrize("granularity", ["unstructured", "structured", "2:4"])
def test_bad_scores_are_an_error_naming_layer_and_criterion_before_anything_changes(case, granularity, mlp, mlp_data):
    change, message = BAD_SCORES[case]
    pruner = Pruner(mlp, mlp_data)
    pruner.prune(0.3)
    snap = snapshot(pruner)
    with pytest.raises((ValueError, TypeError), match=message if granularity != "structured" else "criterion 'custom'"):
        pruner.prune(0.5, criterion=Scores(change), granularity=granularity)
    assert_unchanged(pruner, snap)


def test_taylor_on_a_nan_training_sample_is_an_error_not_a_ranking_by_index(mlp, mlp_data):
    x, y = mlp_data
    bad = x.clone()
    bad[3, 2] = float("nan")
    pruner = Pruner(mlp, mlp_data, train_data=(bad, y))
    snap = snapshot(pruner)
    with pytest.raises(ValueError, match=r"criterion 'taylor'.*non-finite.*layer '0'.*scoring data"):
        pruner.prune(0.5, criterion="taylor")
    assert_unchanged(pruner, snap)


def test_adopted_scores_are_checked_too(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    scores = {n: torch.ones(3) for n in pruner.layer_names}
    with pytest.raises(ValueError, match="criterion 'magnitude'.*layer '0' shaped"):
        pruner.add_scores("magnitude", scores, units=False, weights_version=pruner.weights_version)


# ---------------------------------------------------------------- transactions, with fault injection

def faulty_writes(monkeypatch, at, error):
    """Make the mask state's parameter write number ``at`` (0-based) raise ``error``."""
    write, calls = MaskState._write, []

    def failing(self, p, *buffer):
        calls.append(p)
        if len(calls) - 1 == at:
            raise error("injected")
        write(self, p, *buffer)

    monkeypatch.setattr(MaskState, "_write", failing)
    return calls


CHANGES = {
    "prune": lambda p: p.prune(0.8),
    "prune structured": lambda p: p.prune({"2": 0.5}, granularity="structured"),
    "set_plans": lambda p: p.set_plans({"0": None}),
    "set_weights": lambda p: p.set_weights({"0.bias": torch.zeros(16)}),
    "undo": lambda p: p.undo(),
    "reset": lambda p: p.reset(),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_an_exception_at_each_write_of_a_change_leaves_everything_as_before(change, mlp_data, monkeypatch):
    pruner = Pruner(make_mlp(), mlp_data)
    pruner.prune(0.5)
    before = pruner.evaluate()
    snap = snapshot(pruner)
    at, calls = 0, []
    while True:
        with monkeypatch.context() as m:
            calls = faulty_writes(m, at, KeyboardInterrupt if at % 2 else RuntimeError)
            try:
                CHANGES[change](pruner)
            except (KeyboardInterrupt, RuntimeError):
                pass
        if len(calls) <= at:  # the change made fewer writes than that: it went through
            break
        assert_unchanged(pruner, snap)
        assert pruner.evaluate() == before
        at += 1
    assert at > 0, "no write was interrupted: the test checked nothing"
    assert pruner.evaluate().accuracy == pytest.approx(
        (pruner.model.eval()(mlp_data[0]).argmax(1) == mlp_data[1]).float().mean().item())


def test_a_failed_change_does_not_call_the_listeners(mlp, mlp_data):
    pruner = Pruner(mlp, mlp_data)
    heard = []
    pruner.on_change(lambda: heard.append(1))
    with pytest.raises(ValueError):
        pruner.prune(0.5, criterion=Scores(lambda s: {}))
    assert heard == []
    pruner.prune(0.5)
    assert heard == [1]
