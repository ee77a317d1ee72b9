"""Interpretability view: input attributions of the original and pruned model per sample, their
drift, per-class accuracy change, and the stale marker."""

import numpy as np

from prunelab.core.copies import ModelCopy, model_state
from prunelab.explorer.analysis import Explainer
from prunelab.explorer.state import measure
from prunelab.explorer.views.interpretability import InterpretabilityView, as_images

from explorer_support import Sent, make_state


def explain(pruner, state, revision):
    explainer = Explainer(ModelCopy(pruner.model), pruner.val_inputs, pruner.val_targets, pruner.classification)
    current = model_state(pruner.model)
    return explainer({**current, **pruner.original_weights}, current, revision, pruner.overall_sparsity())


def test_images_original_beside_pruned_with_drift(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = InterpretabilityView(mlp_demo_pruner, state, image_shape=(8, 8))
    assert "computing" in view.caption.value
    mlp_demo_pruner.prune(0.9)
    measure(mlp_demo_pruner, state)
    ex = explain(mlp_demo_pruner, state, state.revision)
    sent = Sent(view.bokeh)
    state.explanations = ex  # of the current revision: the hub derives that they are fresh
    assert not state.explanations_stale
    assert len(view.inputs_src.data["image"]) == 6 and view.inputs_src.data["image"][0].shape == (8, 8)
    assert len(view.attr_src.data["image"]) == 12  # original row and pruned row
    assert f"{ex.mean_drift:.3f}" in view.caption.value and "stale" not in view.caption.value
    assert sent.columns(view.attr_src) >= {"image"} and not sent.rerendered()
    mlp_demo_pruner.prune(0.95)
    measure(mlp_demo_pruner, state)  # a new revision: the explanations shown are of the one before
    assert state.explanations_stale and "stale" in view.caption.value
    mlp_demo_pruner.reset()


def test_per_class_accuracy_change_follows_every_measurement(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    state = make_state(mlp_demo_pruner)
    view = InterpretabilityView(mlp_demo_pruner, state, image_shape=(8, 8))
    sent = Sent(view.bokeh)
    mlp_demo_pruner.prune(0.97)
    measure(mlp_demo_pruner, state)
    m = mlp_demo_pruner.evaluate()
    expected = (np.array(m.per_class) - np.array(state.baseline.per_class)) * 100
    assert np.allclose(view.class_src.data["delta"], expected)
    assert list(view.class_src.data["cls"]) == [str(i) for i in range(10)]
    assert "delta" in sent.columns(view.class_src) and not sent.rerendered()
    mlp_demo_pruner.reset()


def test_one_dimensional_inputs_are_bars(mlp_demo_pruner):
    state = make_state(mlp_demo_pruner)
    view = InterpretabilityView(mlp_demo_pruner, state, image_shape=None)  # 64 features, no image shape
    state.explanations = explain(mlp_demo_pruner, state, state.revision)
    assert len(view.bars_src.data["x"]) == 6 * 32 * 2  # 6 samples x 32 strongest features x 2 models
    assert view.inputs_src.data["image"] == []


def test_image_shapes():
    assert as_images(np.zeros((2, 64)), (8, 8)).shape == (2, 8, 8)
    assert as_images(np.ones((2, 3, 5, 4)), None).shape == (2, 5, 4)  # channels summed
    assert as_images(np.zeros((2, 10)), None) is None
