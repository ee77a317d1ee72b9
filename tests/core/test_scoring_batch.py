"""Gradient criteria score in batches whose activations fit a memory budget, whatever the model's
size (a ResNet-50 at 224 px would need 50 GB for 256 samples at once)."""

import torch
from torch import nn

from core_models import random_data
import prunelab as pl
from prunelab.core import scores


def wide_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 32 * 32, 4))


def test_batches_shrink_to_fit_the_gradient_budget_and_taylor_still_scores(monkeypatch):
    pruner = pl.Pruner(wide_cnn(), random_data((3, 32, 32), n=40, classes=4))
    per_sample = 4 * 32 * 32 * 32 * 3 + 2 * 4 * 4  # conv, relu, flatten outputs (131 kB each), the logits (twice)
    assert scores.scoring_batch(pruner, pruner.val_inputs) == 256  # 34 MB: within the default budget
    monkeypatch.setattr(scores, "GRADIENT_BYTES", int(8.5 * per_sample))
    assert scores.scoring_batch(pruner, pruner.val_inputs) == 8
    ctx = scores.scoring_context(pruner, pruner.val_inputs, pruner.val_targets)
    assert [len(x) for x, _ in ctx.batches()] == [8] * 5
    taylor = pl.Taylor().weight_scores(ctx)
    assert set(taylor) == set(pruner.layer_names) and all(bool(t.isfinite().all()) for t in taylor.values())


def test_a_small_model_keeps_batches_of_256():
    pruner = pl.Pruner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), random_data((8,), n=600, classes=3))
    assert scores.scoring_batch(pruner, pruner.val_inputs) == min(pruner.batch_size, 256)
