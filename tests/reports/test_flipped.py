"""pruner.flipped(): the evaluation samples whose predicted class changed between the dense model
(the original weights) and the current one, checked against an independent loop over model(x);
the per-class summary; the Pruner left exactly as it was; classifiers only."""

import copy
from collections import Counter

import pytest
import torch

import prunelab as pl
from prunelab.reports.flipped import CLASS_COLUMNS, SAMPLE_COLUMNS

from core_models import assert_same_state, make_bn_cnn, make_mlp, random_data, state_of, IMAGE


def predictions(model, x, weights=None):
    """(predicted class, softmax confidence) of a deepcopy of ``model`` (``weights`` loaded), by a plain loop."""
    model = copy.deepcopy(model)
    if weights is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
    model.eval()
    preds, confs = [], []
    with torch.no_grad():
        for i in range(len(x)):
            probs = torch.softmax(model(x[i:i + 1]).float(), dim=1)[0]
            preds.append(int(probs.argmax()))
            confs.append(float(probs.max()))
    return preds, confs


def expected_rows(pruner):
    x, y = pruner.val_inputs, pruner.val_targets
    before, cb = predictions(pruner.model, x, pruner.original_weights)
    after, ca = predictions(pruner.model, x)
    return [dict(index=i, label=int(y[i]), before=before[i], after=after[i], confidence_before=cb[i],
                 confidence_after=ca[i]) for i in range(len(x)) if before[i] != after[i]]


def assert_rows_match(table, expected):
    assert table.columns == list(SAMPLE_COLUMNS)
    assert [r["index"] for r in table] == [r["index"] for r in expected]
    for got, want in zip(table, expected):
        assert {k: got[k] for k in ("index", "label", "before", "after")} == \
               {k: want[k] for k in ("index", "label", "before", "after")}
        assert got["confidence_before"] == pytest.approx(want["confidence_before"], abs=1e-5)
        assert got["confidence_after"] == pytest.approx(want["confidence_after"], abs=1e-5)


def test_flipped_matches_an_independent_loop(mlp_demo_pruner):
    pruner = mlp_demo_pruner.prune(0.9)
    table = pruner.flipped()
    expected = expected_rows(pruner)
    assert len(expected) > 0  # 90% one-shot on digits-mlp changes some predictions
    assert_rows_match(table, expected)
    assert all(0 < r["confidence_before"] <= 1 and 0 < r["confidence_after"] <= 1 for r in table)
    # the flips are what separates the dense accuracy from the pruned one
    y = pruner.val_targets
    broken = sum(r["before"] == r["label"] for r in table) - sum(r["after"] == r["label"] for r in table)
    dense = pl.Pruner(copy.deepcopy(pruner.model), (pruner.val_inputs, y))
    dense.set_weights(pruner.original_weights)
    assert broken / len(y) == pytest.approx(dense.evaluate().accuracy - pruner.evaluate().accuracy, abs=1e-9)


def test_dense_is_the_original_weights_even_after_a_finetune(mlp_demo_pruner, one_thread):
    pruner = mlp_demo_pruner.prune(0.8)
    pruner.finetune(1, progress=False)
    assert_rows_match(pruner.flipped(), expected_rows(pruner))


def test_nothing_pruned_nothing_flipped(mlp_demo_pruner):
    assert len(mlp_demo_pruner.flipped()) == 0
    pruner = mlp_demo_pruner.prune(0.9)
    assert len(pruner.flipped()) > 0
    pruner.undo()
    assert len(pruner.flipped()) == 0
    assert all(r["flipped"] == 0 and r["share"] == 0 for r in pruner.flipped(by_class=True))


def test_by_class_counts_where_the_flips_cluster(cnn_demo_pruner):
    pruner = cnn_demo_pruner.prune(0.9)
    samples, classes = pruner.flipped(), pruner.flipped(by_class=True)
    assert classes.columns == list(CLASS_COLUMNS)
    by_label, by_after = Counter(r["label"] for r in samples), Counter(r["after"] for r in samples)
    y = pruner.val_targets.tolist()
    for r in classes:
        c = r["class"]
        assert r["samples"] == y.count(c)
        assert r["flipped"] == by_label.get(c, 0)
        assert r["into"] == by_after.get(c, 0)
        assert r["rate"] == pytest.approx(r["flipped"] / r["samples"])
        assert r["share"] == pytest.approx(r["flipped"] / len(samples))
        assert r["broken"] == sum(s["label"] == c and s["before"] == c for s in samples)
        assert r["fixed"] == sum(s["label"] == c and s["after"] == c for s in samples)
    assert sum(classes.column("samples")) == len(y)
    assert sum(classes.column("flipped")) == sum(classes.column("into")) == len(samples)
    flips = classes.column("flipped")
    assert flips == sorted(flips, reverse=True)  # the classes they cluster in come first
    accuracy = sum(r["accuracy_after"] * r["samples"] for r in classes) / len(y)
    assert accuracy == pytest.approx(pruner.evaluate().accuracy)
    assert "evaluation samples changed class" in str(classes)


def test_the_pruner_is_left_exactly_as_it_was():
    x, y = random_data(IMAGE, n=64)
    model = make_bn_cnn()
    pruner = pl.Pruner(model, (x, y)).prune(0.7)
    pruner.prune(0.8)
    pruner.undo()
    model.train()  # its own mode, kept
    before = state_of(model)
    history, masks, plans = pruner.history, pruner.masks(), pruner.plans
    table = pruner.flipped()
    pruner.flipped(by_class=True)
    assert_same_state(model, before)
    assert model.training and all(m.training for m in model.modules())
    assert pruner.plans == plans and pruner.can_redo
    assert pruner.history.cursor == history.cursor and len(pruner.history) == len(history)
    assert all(torch.equal(pruner.masks()[k], masks[k]) for k in masks)
    model.eval()
    assert_rows_match(table, expected_rows(pruner))


def test_classifiers_only():
    x, _ = random_data((8,))
    pruner = pl.Pruner(make_mlp(), (x, torch.randn(len(x), 3)), metric=lambda o, t: float(-((o - t) ** 2).mean()))
    with pytest.raises(ValueError, match="needs a classifier.*pruner.outputs"):
        pruner.flipped()


def test_by_class_must_be_a_bool(mlp_demo_pruner):
    with pytest.raises(TypeError, match="by_class must be True or False"):
        mlp_demo_pruner.flipped(by_class="yes")
