"""What the explorer added to the core: Pruner.weights_version / original_weights / add_scores,
and FLOPs counted without FlopCounterMode for plain Linear/Conv models."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunelab as pl
from prunelab.core.flops import count_flops, hooked_flops


def test_weights_version_follows_set_weights_and_history(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    v0 = mlp_demo_pruner.weights_version
    mlp_demo_pruner.prune(0.5)
    assert mlp_demo_pruner.weights_version == v0
    mlp_demo_pruner.set_weights({"0.weight": torch.zeros(mlp_demo_pruner.layer("0").shape)})
    assert mlp_demo_pruner.weights_version != v0
    mlp_demo_pruner.undo()
    assert mlp_demo_pruner.weights_version == v0
    mlp_demo_pruner.reset()


def test_original_weights_stay_original(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    first = mlp_demo_pruner.model[0].weight.detach().clone()
    mlp_demo_pruner.prune(0.9)
    mlp_demo_pruner.set_weights({"0.weight": torch.ones(mlp_demo_pruner.layer("0").shape)})
    assert torch.equal(mlp_demo_pruner.original_weights["0.weight"], first)
    mlp_demo_pruner.reset()


def test_add_scores_is_used_for_the_current_weights_only(mlp_demo_pruner):
    mlp_demo_pruner.reset()
    fake = {l.name: torch.arange(l.params, dtype=torch.float).reshape(l.shape) for l in mlp_demo_pruner.layers}
    assert not mlp_demo_pruner.add_scores("taylor", fake, units=False, weights_version=mlp_demo_pruner.weights_version + 1)
    assert mlp_demo_pruner.add_scores("taylor", fake, units=False, weights_version=mlp_demo_pruner.weights_version)
    mlp_demo_pruner.prune({"4": 0.5}, criterion="taylor")
    keep, half = mlp_demo_pruner.mask("4").reshape(-1), mlp_demo_pruner.layer("4").params // 2
    assert not keep[:half].any() and keep[half:].all()  # the adopted scores decided
    mlp_demo_pruner.reset()


def _reference(model, x):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()
        model(x)
    return int(sum(counter.get_flop_counts()["Global"].values()))


def test_fast_flop_count_equals_flop_counter_mode(cnn_demo):
    cnn = cnn_demo.model
    x = torch.randn(1, 1, 8, 8)
    names = [n for n, m in cnn.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    total, per_layer = hooked_flops(cnn, x, names)
    assert total == _reference(cnn, x) and sum(per_layer.values()) == total


def test_models_with_other_matrix_products_fall_back():
    class WithMatmul(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.w = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return self.fc(x) @ self.w

    model, x = WithMatmul(), torch.randn(1, 4)
    assert hooked_flops(model, x, ["fc"]) is None
    assert count_flops(model, x, ["fc"])[0] == _reference(model, x) == 2 * 16 + 2 * 16


def test_demo_data_is_scikit_learns_split_without_importing_it():
    import subprocess
    import sys

    code = ("import sys, prunelab as pl; pl.demos.load('digits-mlp'); "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # opening a demo does not pay for importing scikit-learn

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    train_idx, val_idx = train_test_split(range(len(data.target)), test_size=0.2, stratify=data.target,
                                          random_state=0)
    train, val = pl.demos.digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    assert torch.equal(val.tensors[0], x[val_idx]) and torch.equal(train.tensors[0], x[train_idx])
    assert torch.equal(val.tensors[1], torch.tensor(data.target)[val_idx])
