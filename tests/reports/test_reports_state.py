"""Every report measures the model as it is and leaves the Pruner exactly as it was: parameters and
buffers bit for bit, masks, plans, and history (its steps, its position, what redo would re-enter)."""

import threading

import pytest
import torch

from prunelab import reports
from prunelab.retrain import Cancelled, Hooks

from core_models import assert_same_state, state_of

# Tiny settings per kind, so each report takes about a second on the digits-cnn demo.
TINY = {
    "sparsity": dict(sparsities=[0, 0.5]),
    "criteria": dict(sparsities=[0.5], criteria=["magnitude", "random"]),
    "layers": {},
    "thresholds": dict(thresholds=[0.05]),
    "iterations": dict(target=0.7, steps=1, epochs_per_step=1),
    "timing": dict(epochs=1, formats=("sparse",)),
    "inference": dict(batch=8, repeats=2),
    "size": dict(formats=("state_dict", "sparse")),
    "compare": dict(repeats=2),
}


def snapshot(pruner) -> dict:
    history = pruner.history
    return dict(state=state_of(pruner.model), masks={k: v.clone() for k, v in pruner.masks().items()},
                plans=pruner.plans, cursor=history.cursor, length=len(history),
                tokens=[s.token for s in history.steps], version=pruner.weights_version,
                can_redo=pruner.can_redo, training=pruner.model.training)


def assert_unchanged(pruner, before: dict):
    assert_same_state(pruner.model, before["state"])
    after = snapshot(pruner)
    assert after["masks"].keys() == before["masks"].keys()
    assert all(torch.equal(after["masks"][k], before["masks"][k]) for k in before["masks"])
    for key in ("plans", "cursor", "length", "tokens", "version", "can_redo", "training"):
        assert after[key] == before[key], key


def test_the_tiny_settings_cover_every_kind():
    assert set(TINY) == set(reports.KINDS)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k == "iterations" else k
                                  for k in reports.KINDS])  # iterations fine-tunes the CNN: seconds
def test_a_report_leaves_the_pruner_bit_for_bit_as_it_was(kind, cnn_demo_pruner, one_thread):
    pruner = cnn_demo_pruner
    # a state with history on both sides of the cursor: structured, then a second step undone
    pruner.prune(0.25, granularity="structured", scope="layer")
    pruner.prune(0.6)
    pruner.undo()
    before = snapshot(pruner)
    accuracy = pruner.evaluate().accuracy
    table = pruner.report(kind, **TINY[kind])
    assert len(table) > 0
    assert_unchanged(pruner, before)
    assert pruner.evaluate().accuracy == accuracy
    assert pruner.redo() and pruner.overall_sparsity() == pytest.approx(0.6, abs=0.01)  # redo still there


def test_a_cancelled_report_stops_and_changes_nothing(mlp_demo_pruner):
    pruner = mlp_demo_pruner.prune(0.5)
    before = snapshot(pruner)
    stop = threading.Event()
    seen = []

    def progress(done, total, what):
        seen.append((done, total))
        stop.set()  # cancel after the first point

    with pytest.raises(Cancelled):
        reports.report(pruner, "sparsity", sparsities=[0, 0.5, 0.9], hooks=Hooks(progress=progress, cancel=stop))
    assert seen == [(1, 3)]
    assert_unchanged(pruner, before)


def test_progress_counts_every_point(mlp_demo_pruner):
    seen = []
    reports.report(mlp_demo_pruner, "criteria", sparsities=[0, 0.9], criteria=["magnitude", "random"],
                   hooks=Hooks(progress=lambda done, total, what: seen.append((done, total))))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_unknown_kinds_and_options_say_what_exists(mlp_demo_pruner):
    with pytest.raises(ValueError, match=r"unknown report 'sparsty'\. Did you mean 'sparsity'\?"):
        mlp_demo_pruner.report("sparsty")
    with pytest.raises(TypeError, match=r"report 'sparsity' takes no option 'sparsity'\. Did you mean 'sparsities'"):
        mlp_demo_pruner.report("sparsity", sparsity=0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mlp_demo_pruner.report("sparsity", sparsities=[0, 1.5])
    with pytest.raises(ValueError, match="2:4 sparsity is always 0.5"):
        mlp_demo_pruner.report("sparsity", sparsities=[0.9], granularity="2:4")
    with pytest.raises(ValueError, match="thresholds must be absolute"):
        mlp_demo_pruner.report("thresholds", thresholds=[-1])
    with pytest.raises(ValueError, match=r"no iterate\(\) run to tabulate"):
        mlp_demo_pruner.report("iterations")
