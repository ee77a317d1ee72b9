"""Background measurements on a copy of the model: scores equal the Pruner's own, attributions
and drift are right, and the live model is never touched."""

import numpy as np
import torch

from prunelab.core.copies import ModelCopy, model_state
from prunelab.explorer.analysis import Explainer, drift, pick_samples, unit_and_weight_scores


def test_scores_on_the_copy_equal_the_pruners_own(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    mlp_demo_pruner.prune(0.7)  # masked live model: scoring must still see the unmasked weights
    live = {n: p.detach().clone() for n, p in mlp_demo_pruner.model.named_parameters()}
    with mlp_demo_pruner.dense():
        dense = model_state(mlp_demo_pruner.model)
    out = unit_and_weight_scores(ModelCopy(mlp_demo_pruner.model), dense, mlp_demo_pruner.scoring_context(), "taylor",
                                 True)
    for n, p in mlp_demo_pruner.model.named_parameters():
        assert torch.equal(p, live[n])  # the live model was not touched
    own = mlp_demo_pruner.scores("taylor", units=True)
    for name, s in own.items():
        assert torch.allclose(out["units"][name], s, rtol=1e-4, atol=1e-7)
    assert out["weights"]["2"].shape == (100, 300)
    mlp_demo_pruner.reset()


def test_explanations_of_an_unpruned_model_do_not_drift(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    explainer = Explainer(ModelCopy(mlp_demo_pruner.model), mlp_demo_pruner.val_inputs, mlp_demo_pruner.val_targets, True)
    state = model_state(mlp_demo_pruner.model)
    ex = explainer(state, state, revision=0, sparsity=0.0)
    assert ex.original.shape == (6, 64) and np.allclose(ex.original, ex.pruned)
    assert ex.mean_drift < 1e-6
    assert list(ex.targets) == [0, 1, 2, 3, 4, 5]  # the first sample of each class
    # completeness of IntegratedGradients: attributions sum to f(x) - f(0) for the target class
    with torch.no_grad():
        x = mlp_demo_pruner.val_inputs[ex.samples]
        out = mlp_demo_pruner.model(x) - mlp_demo_pruner.model(torch.zeros_like(x))
    gap = out[torch.arange(6), torch.as_tensor(ex.targets)].numpy()
    assert np.allclose(ex.original.sum(1), gap, atol=0.05 * np.abs(gap).max())


def test_drift_is_one_minus_cosine():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(drift(a, a), [0, 0, 1])  # all-zero attributions count as unrelated
    assert np.allclose(drift(a, b), [1, 2, 1])


def test_pick_samples_one_per_class_first():
    y = torch.tensor([3, 3, 1, 0, 1, 2, 0])
    assert list(pick_samples(y, 3, True)) == [3, 2, 5]  # classes 0, 1, 2
    assert list(pick_samples(y, 6, True)) == [3, 2, 5, 0, 1, 4]  # 4 classes, then the next samples
    assert list(pick_samples(y, 2, False)) == [0, 1]
