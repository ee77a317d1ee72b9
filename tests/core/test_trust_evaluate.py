"""Trust, the measuring (issue 10, cases 6 to 9): an interrupted evaluate, hooks, every module's
own train flag, and the same evaluation subset whatever the loader's shuffle. Fault injection:
an exception at each batch of evaluate's forward leaves everything as before."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core_models import VECTOR, assert_same_state, make_branching_mlp, make_mlp, random_data, state_of
from prunelab import Pruner


def plain_outputs(model, x):
    """``model(x)`` in eval mode, every module's own flag put back after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    with torch.no_grad():
        out = model(x)
    for m, t in modes.items():
        m.training = t
    return out


def plain_accuracy(model, x, y):
    return (plain_outputs(model, x).argmax(1) == y).float().mean().item()


class Bomb:
    """Replaces a module's forward: raises ``error`` on call number ``at`` (0-based), then never."""

    def __init__(self, module, at, error=KeyboardInterrupt):
        self.module, self.at, self.error, self.calls = module, at, error, 0
        self.forward = module.forward
        module.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls - 1 == self.at:
            raise self.error("injected")
        return self.forward(*args, **kwargs)

    def remove(self):
        del self.module.forward


# ---------------------------------------------------------------- case 6 and fault injection

def test_an_interrupted_evaluate_leaves_no_stale_result(mlp_data):
    pruner = Pruner(make_mlp(), mlp_data)
    dense = pruner.evaluate()
    pruner.prune(0.9)
    bomb = Bomb(pruner.model[2], at=0)
    with pytest.raises(KeyboardInterrupt):
        pruner.evaluate()
    bomb.remove()
    pruned = pruner.evaluate()
    assert pruned.accuracy == pytest.approx(plain_accuracy(pruner.model, *mlp_data))
    assert torch.equal(pruner.outputs(), plain_outputs(pruner.model, mlp_data[0]))
    assert pruned.nonzero_params < dense.nonzero_params


@pytest.mark.parametrize("build", [make_mlp, make_branching_mlp], ids=["traced", "plain forward"])
def test_an_exception_at_each_batch_of_evaluate_changes_nothing(build, mlp_data):
    x, y = mlp_data
    pruner = Pruner(build(), mlp_data, batch_size=8)  # 48 samples: 6 batches
    pruner.evaluate()
    pruner.prune(0.7)
    before, cursor, sparsity = state_of(pruner.model), pruner.history.cursor, pruner.sparsity()
    module = pruner.model.get_submodule(pruner.layer_names[-1])
    for at in range(len(x) // 8):
        bomb = Bomb(module, at, RuntimeError if at % 2 else KeyboardInterrupt)
        with pytest.raises((RuntimeError, KeyboardInterrupt), match="injected"):
            pruner.evaluate()
        bomb.remove()
        assert bomb.calls == at + 1, "the fault fired at the batch meant"
        assert_same_state(pruner.model, before)
        assert pruner.history.cursor == cursor and pruner.sparsity() == sparsity
    assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(pruner.model, x, y))
    pruner.prune(0.3)  # the incremental caches are right again afterwards
    assert torch.allclose(pruner.outputs(), plain_outputs(pruner.model, x), atol=1e-6)


# ---------------------------------------------------------------- case 7: hooks

def test_a_forward_hook_on_the_root_module_is_respected(mlp_data):
    x, y = mlp_data
    pruner = Pruner(make_mlp(), mlp_data)
    before = pruner.evaluate().accuracy
    handle = pruner.model.register_forward_hook(lambda m, i, out: -out)  # flips every prediction's ranking
    hooked = pruner.evaluate()
    assert hooked.accuracy == pytest.approx(plain_accuracy(pruner.model, x, y))
    assert hooked.accuracy != before
    assert torch.equal(pruner.outputs(), plain_outputs(pruner.model, x))
    handle.remove()
    assert pruner.evaluate().accuracy == pytest.approx(before)


class Block(nn.Module):
    """A custom module: torch.fx traces through it, so the interpreter would skip its hooks."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)

    def forward(self, x):
        return torch.relu(self.fc(x))


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_hook_on_any_module_is_respected_while_it_is_there_and_not_after(when, mlp_data):
    x, y = mlp_data
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), Block(), nn.Linear(12, 3))

    def hook():
        return [model[2].register_forward_hook(lambda m, i, out: out * 0 + torch.arange(12.0)),
                model[3].register_forward_pre_hook(lambda m, args: (args[0] + 1,))]

    handles = hook() if when == "before" else []  # present when the model is traced, or added later
    pruner = Pruner(model, mlp_data)
    pruner.evaluate()
    handles = handles or hook()
    for amount in (0.0, 0.5, 0.8):
        pruner.prune(amount)
        assert torch.equal(pruner.outputs(), plain_outputs(model, x))
        assert pruner.evaluate().accuracy == pytest.approx(plain_accuracy(model, x, y))
    for h in handles:
        h.remove()
    assert torch.equal(pruner.outputs(), plain_outputs(model, x))
    pruner.prune(0.3)
    assert torch.equal(pruner.outputs(), plain_outputs(model, x))


# ---------------------------------------------------------------- case 8: train flags

def test_every_modules_own_train_flag_survives_everything_in_core(mlp_data):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 12), nn.BatchNorm1d(12),
                          nn.ReLU(), nn.Linear(12, 3))
    model.eval()
    model[1].train()  # MC-dropout kept in train mode
    modes = [m.training for m in model.modules()]
    pruner = Pruner(model, mlp_data, train_data=mlp_data)
    pruner.flops()
    for criterion in ("magnitude", "taylor", "attribution"):
        pruner.prune(0.5, criterion=criterion)
    pruner.prune({"3": 0.5}, granularity="structured")
    pruner.evaluate()
    pruner.reset()
    assert [m.training for m in model.modules()] == modes


def test_a_model_in_train_mode_with_one_submodule_in_eval_keeps_both(mlp_data):
    model = make_mlp()
    model.train()
    model[2].eval()
    pruner = Pruner(model, mlp_data)
    pruner.prune(0.5, criterion="taylor")
    pruner.evaluate()
    assert model.training and model[0].training and not model[2].training


# ---------------------------------------------------------------- case 9: the subset

def test_the_evaluation_subset_is_the_same_whatever_the_loaders_shuffle():
    x, y = random_data(VECTOR, n=300)
    measured = []
    for seed in range(3):
        shuffle = torch.Generator().manual_seed(seed)  # a different order each time
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=shuffle)
        pruner = Pruner(make_mlp(), loader, eval_samples=100)
        measured.append((pruner.val_inputs, pruner.evaluate().accuracy))
    for inputs, accuracy in measured[1:]:
        assert torch.equal(inputs, measured[0][0])
        assert accuracy == measured[0][1]
