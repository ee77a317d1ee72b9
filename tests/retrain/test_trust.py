"""Issue 10 (trust) for retraining: every mistake is a clear error before anything is copied or
trained, and finetune / iterate are transactions (an exception or a KeyboardInterrupt at any batch
leaves the Pruner exactly as it was; iterate: at its last completed step). Flags and buffers of
the Pruner's model are never touched."""

import copy

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab import retrain
from prunelab.core.copies import PrunerCopy
from prunelab.retrain import FinetuneSettings, Hooks, IterateJob, IterateSettings
from prunelab.core.modes import untouched
from prunelab.retrain.loop import training_mode

from core_models import CLASSES, VECTOR, assert_same_state, random_data, state_of

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread

QUICK = dict(progress=False, batch_size=16)  # 48 samples: 3 batches an epoch
ITERATE = dict(steps=2, epochs_per_step=1, final_epochs=1, **QUICK)


# ---------------------------------------------------------------------- helpers

def snapshot(p) -> dict:
    """Everything a transaction must leave as it was: parameters and buffers (bits), every
    module's flag, the history (the same step objects), plans, masks and the measurement."""
    m = p.evaluate()
    return dict(state=state_of(p.model), flags=[(n, mod.training) for n, mod in p.model.named_modules()],
                steps=p.history.steps, held=len(p.history), cursor=p.history.cursor, version=p.weights_version,
                plans=dict(p.plans), masks={n: k.clone() for n, k in p.masks().items()},
                measured=(m.accuracy, m.loss))


def assert_unchanged(p, before: dict) -> None:
    assert_same_state(p.model, before["state"])
    assert [(n, mod.training) for n, mod in p.model.named_modules()] == before["flags"]
    steps = p.history.steps
    assert len(steps) == len(before["steps"]) and all(a is b for a, b in zip(steps, before["steps"]))
    assert (len(p.history), p.history.cursor, p.weights_version) == (before["held"], before["cursor"],
                                                                     before["version"])
    assert p.plans.keys() == before["plans"].keys() and all(p.plans[n] is v for n, v in before["plans"].items())
    masks = p.masks()
    assert masks.keys() == before["masks"].keys() and all(torch.equal(masks[n], k) for n, k in before["masks"].items())
    m = p.evaluate()
    assert (m.accuracy, m.loss) == before["measured"]


def plain_accuracy(p) -> float:
    """Accuracy of ``model(x)`` in a plain loop, beside the Pruner's own measurement."""
    with torch.no_grad(), untouched(p.model):
        return float((p.model(p.val_inputs).argmax(1) == p.val_targets).float().mean())


@pytest.fixture
def small(mlp, mlp_data):
    """A Pruner on the small core MLP, 50% pruned, training on its own 48 samples."""
    return pl.Pruner(mlp, mlp_data, train_data=mlp_data).prune(0.5)


@pytest.fixture
def no_copy(monkeypatch):
    """Fails the test if a workflow takes a copy of the model: its checks must come first."""
    def refuse(pruner):
        raise AssertionError("a copy was taken before the arguments were checked")
    monkeypatch.setattr(PrunerCopy, "of", classmethod(lambda cls, pruner: refuse(pruner)))


def finetune(p, **kw):
    return retrain.finetune(p, 2, **(QUICK | kw))


def iterate(p, target=0.8, **kw):
    return retrain.iterate(p, target, **(ITERATE | kw))


WORKFLOWS = {"finetune": finetune, "iterate": iterate}


# ---------------------------------------------------------------------- clear errors, up front

@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_every_parameter_frozen_says_what_to_unfreeze(small, run, no_copy):
    small.model.requires_grad_(False)
    before = snapshot(small)
    with pytest.raises(ValueError, match="requires_grad=False.*requires_grad_\\(True\\)"):
        run(small)
    assert_unchanged(small, before)


def test_a_partly_frozen_model_trains_only_what_is_unfrozen(small):
    small.model[0].requires_grad_(False)
    frozen = small.model[0].weight.detach().clone()
    finetune(small)
    assert torch.equal(small.model[0].weight, frozen)
    assert not torch.equal(small.history.current.weights["4.weight"], small.history.steps[-2].weights["4.weight"])


def test_regrowth_leaves_a_frozen_layer_as_it_is(small):
    small.model[0].requires_grad_(False)
    keep = small.mask("0").clone()
    iterate(small, target=0.6, regrow=0.2, granularity="unstructured")
    assert not (small.mask("0") & ~keep).any()  # nothing pruned in the frozen layer came back
    assert small.overall_sparsity() == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_training_targets_out_of_range_are_refused_before_any_copy(mlp, mlp_data, run, no_copy):
    x, y = mlp_data
    p = pl.Pruner(mlp, mlp_data, train_data=(x, y + CLASSES))
    before = snapshot(p)
    with pytest.raises(ValueError, match=r"train_data: targets range over \[3, 5\] .* must lie in \[0, 3\)"):
        run(p)
    assert_unchanged(p, before)


@pytest.mark.parametrize("kind", ["dataset", "dataloader"])
def test_training_targets_out_of_range_in_a_dataset_stop_before_that_batch_trains(mlp, mlp_data, kind):
    x, y = mlp_data
    y = y.clone()
    y[-1] = -1  # only the last sample is wrong: found when its batch comes, before it trains
    data = torch.utils.data.TensorDataset(x, y)
    data = torch.utils.data.DataLoader(data, batch_size=16) if kind == "dataloader" else _Mapped(data)
    p = pl.Pruner(mlp, mlp_data, train_data=data).prune(0.5)
    before = snapshot(p)
    with pytest.raises(ValueError, match=r"train_data: targets range over \[-1, "):
        finetune(p)
    assert_unchanged(p, before)


class _Mapped(torch.utils.data.Dataset):
    """A plain map-style Dataset (not a TensorDataset, so it goes through a DataLoader)."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data[i]


class Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: torch.utils.data.DataLoader(s, batch_size=8)],
                         ids=["iterable-dataset", "dataloader-over-it"])
@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_a_stream_as_train_data_scores_but_training_refuses_it_saying_what_to_pass(mlp, mlp_data, wrap, run,
                                                                                    no_copy):
    p = pl.Pruner(mlp, mlp_data, train_data=wrap(Stream(*mlp_data)))  # construction reads its first samples
    p.prune(0.5, criterion="taylor")  # scoring takes the stream's first samples
    assert p.overall_sparsity() == pytest.approx(0.5, abs=0.01)
    before = snapshot(p)
    with pytest.raises(TypeError, match="stream .*map-style Dataset.*pair of tensors"):
        run(p)
    assert_unchanged(p, before)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, "32", True, None])
@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_a_batch_size_that_is_not_a_positive_whole_number_is_refused(small, run, batch_size, no_copy):
    before = snapshot(small)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
        run(small, batch_size=batch_size)
    assert_unchanged(small, before)


@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_lbfgs_trains_with_its_closure_and_keeps_pruned_weights_zero(small, run):
    run(small, optimizer=torch.optim.LBFGS)
    assert small.can_undo and small.weights_version != 0
    params = dict(small.model.named_parameters())
    for name, keep in small.masks().items():
        assert bool((params[name].detach()[~keep].view(torch.int32) == 0).all()), name  # +0.0, bit for bit
    assert small.evaluate().accuracy == pytest.approx(plain_accuracy(small))


def test_lbfgs_lowers_the_training_loss(small):
    result = retrain.finetune(small, 3, optimizer=torch.optim.LBFGS, lr=0.5, **QUICK)
    assert result.train_loss[-1] < result.train_loss[0]


@pytest.mark.parametrize("loss, error, match", [
    (lambda out, y: nn.functional.cross_entropy(out, y, reduction="none"), ValueError, r"shape \(2,\).*reduction"),
    (lambda out, y: float(nn.functional.cross_entropy(out, y)), TypeError, "returned float"),
    (lambda out, y: nn.functional.cross_entropy(out, y).detach(), ValueError, "no gradient"),
], ids=["reduction-none", "a-float", "detached"])
@pytest.mark.parametrize("run", WORKFLOWS.values(), ids=WORKFLOWS.keys())
def test_a_loss_that_is_not_a_scalar_with_a_gradient_is_refused_before_training(mlp, mlp_data, loss, error,
                                                                                 match, run):
    p = pl.Pruner(mlp, mlp_data, train_data=mlp_data).prune(0.5)
    p.loss = loss
    before = snapshot(p)
    stepped = []
    with pytest.raises(error, match=match):
        run(p, hooks=Hooks(progress=lambda *a: stepped.append(a)))
    assert not stepped  # refused before the first batch trained
    assert_unchanged(p, before)


# ---------------------------------------------------------------------- flags (issue 10, case 8)

def mixed_flags_model() -> nn.Module:
    """Root in train mode with one submodule in eval; and an MC-dropout kept in train mode under
    an eval parent."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Dropout(0.1), nn.Linear(16, 12)),
                          nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, CLASSES))
    return model


def set_mixed(model):
    model.train()
    model[2].eval()        # one submodule in eval mode
    model[4].train()
    model[2][0].train()    # an MC-dropout kept in train mode inside the eval submodule
    return [(n, m.training) for n, m in model.named_modules()]


def test_training_mode_restores_each_modules_own_flag_and_every_buffer_even_on_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout()).eval()
    model[2].train()
    flags = [m.training for m in model.modules()]
    buffers = state_of(model)
    with pytest.raises(RuntimeError, match="inside"):
        with training_mode(model):
            assert (model[0].training, model[1].training, model[2].training) == (True, False, True)
            model[1].train()(torch.randn(4, 2))  # running statistics move inside...
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == flags  # ...and every flag and buffer comes back
    assert_same_state(model, buffers)


@pytest.mark.parametrize("work", [
    lambda p: finetune(p),
    lambda p: iterate(p),
    lambda p: p.sensitivity([0.5, 0.9]),
    lambda p: p.allocate(target_sparsity=0.6, table=p.sensitivity([0.5, 0.9])),
], ids=["finetune", "iterate", "sensitivity", "allocate"])
def test_workflows_leave_every_modules_own_train_flag(mlp_data, work):
    model = mixed_flags_model()
    p = pl.Pruner(model, mlp_data, train_data=mlp_data).prune(0.5)
    flags = set_mixed(model)
    work(p)
    assert [(n, m.training) for n, m in model.named_modules()] == flags


def test_a_private_copy_keeps_each_modules_flag_and_leaves_the_model_alone(mlp_data):
    model = mixed_flags_model()
    p = pl.Pruner(model, mlp_data).prune(0.5)
    flags = set_mixed(model)
    copy = PrunerCopy.of(p)
    assert [(n, m.training) for n, m in copy.model.named_modules()] == flags
    assert [(n, m.training) for n, m in model.named_modules()] == flags


def versions(model) -> list[int]:
    """Each parameter's and buffer's version counter: it moves with every in-place write."""
    return [t._version for t in [*model.parameters(), *model.buffers()]]


@pytest.mark.parametrize("work", [
    lambda p: PrunerCopy.of(p),
    lambda p: retrain.FinetuneJob(p, FinetuneSettings(epochs=1, batch_size=16)).prepare().run(),
    lambda p: p.sensitivity([0.5, 0.9]),
], ids=["copy", "finetune-until-apply", "sensitivity"])
def test_work_on_a_copy_never_writes_the_pruners_model(small, work):
    before = versions(small.model)
    work(small)
    assert versions(small.model) == before


# ---------------------------------------------------------------------- buffers (issue 10, case 11)

class CountingBatchNorm(nn.BatchNorm1d):
    """Counts the batches it sees in train mode, in Python (as timm's layers do), in a buffer and
    in a plain attribute."""

    def __init__(self, features):
        super().__init__(features)
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))
        self.python_count = 0

    def forward(self, x):
        if self.training:
            self.seen += 1
            self.python_count += 1
        return super().forward(x)


@pytest.mark.parametrize("work", [
    lambda p: finetune(p),
    lambda p: iterate(p, recalibrate=False),  # recalibrate=True (the default) re-estimates them: a step of history
    lambda p: iterate(p, regrow=0.2, granularity="unstructured", recalibrate=False),
    lambda p: p.sensitivity([0.5, 0.9]),
    lambda p: p.allocate(target_sparsity=0.6, table=p.sensitivity([0.5, 0.9])),
], ids=["finetune", "iterate", "iterate-regrow", "sensitivity", "allocate"])
def test_workflows_leave_a_counting_batchnorm_untouched(mlp_data, work):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), CountingBatchNorm(16), nn.ReLU(), nn.Linear(16, CLASSES))
    p = pl.Pruner(model, mlp_data, train_data=mlp_data).prune(0.5)
    p.evaluate()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    count = model[1].python_count
    work(p)
    assert {n: b for n, b in model.named_buffers()}.keys() == buffers.keys()
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert model[1].python_count == count


# ---------------------------------------------------------------------- transactions, fault injection

class Fault(Exception):
    pass


def raise_at(k: int, error):
    """A progress hook that raises ``error`` after the ``k``-th batch of the run."""
    def progress(done, total, what):
        if done == k:
            raise error
    return progress


def tripwired(calls: list, fail_at: int | None = None, error=Fault) -> dict:
    """A loss (cross-entropy) and a metric (accuracy) that count their calls together and raise
    ``error`` at call ``fail_at``: every training batch and every measurement passes there."""
    def tick():
        calls.append(1)
        if len(calls) == fail_at:
            raise error("injected")

    def loss(out, y):
        tick()
        return nn.functional.cross_entropy(out, y)

    def metric(out, y):
        tick()
        return float((out.argmax(1) == y).float().mean())
    return dict(loss=loss, metric=metric)


def arm(p, calls: list, fail_at: int | None = None, error=Fault) -> None:
    for name, f in tripwired(calls, fail_at, error).items():
        setattr(p, name, f)


def batches_of(p, run) -> int:
    seen = []
    run(p, hooks=Hooks(progress=lambda done, total, what: seen.append(done)))
    return len(seen)


@pytest.mark.parametrize("error", [Fault("injected"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"])
def test_finetune_interrupted_at_any_batch_leaves_the_pruner_exactly_as_it_was(mlp, mlp_data, error):
    p = pl.Pruner(mlp, mlp_data, train_data=mlp_data).prune(0.5)
    p.finetune(1, progress=False, batch_size=16)  # a history with some depth
    p.undo()                                      # and a redo step, which must survive
    before = snapshot(p)
    total = batches_of(pl.Pruner(copy.deepcopy(mlp), mlp_data, train_data=mlp_data), finetune)
    assert total == 6  # 48 samples in batches of 16, 2 epochs
    for k in range(1, total + 1):
        with pytest.raises(type(error)):
            finetune(p, hooks=Hooks(progress=raise_at(k, error)))
        assert_unchanged(p, before)


@pytest.mark.parametrize("error", [Fault, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
def test_finetune_failing_at_any_loss_or_measurement_leaves_the_pruner_exactly_as_it_was(mlp, mlp_data, error):
    calls: list = []
    p = pl.Pruner(mlp, mlp_data, train_data=mlp_data, **tripwired(calls)).prune(0.5)
    p.evaluate()
    calls.clear()
    finetune(p)
    n = len(calls)  # the rehearsal, every batch, and every measurement (before, after)
    assert n >= 6 + 3
    p.undo()
    before = snapshot(p)
    for k in range(1, n + 1):
        calls.clear()
        arm(p, calls, fail_at=k, error=error)
        with pytest.raises((error, ValueError), match="injected"):  # or named by a check that met it
            finetune(p)
        arm(p, calls)
        assert_unchanged(p, before)


def record_iterate(p) -> list[tuple[int, int, dict]]:
    """Run iterate step by step on ``p``, recording after each applied step: (batches done, loss
    calls made, the Pruner's state)."""
    done, calls = [0], []
    arm(p, calls)
    job = IterateJob(p, IterateSettings(target=0.8, steps=2, epochs_per_step=1, final_epochs=1, batch_size=16))
    job.prepare()
    records = []

    def on_step(step):
        job.apply(step)
        records.append((done[0], len(calls), snapshot_state(p)))

    def progress(d, total, what):
        done[0] = d
    job.run(Hooks(progress=progress), on_step=on_step)
    return records


def snapshot_state(p) -> dict:
    return dict(state=state_of(p.model), held=len(p.history), cursor=p.history.cursor,
                masks={n: k.clone() for n, k in p.masks().items()})


def assert_state(p, expected: dict) -> None:
    assert_same_state(p.model, expected["state"])
    assert (len(p.history), p.history.cursor) == (expected["held"], expected["cursor"])
    masks = p.masks()
    assert masks.keys() == expected["masks"].keys()
    assert all(torch.equal(masks[n], k) for n, k in expected["masks"].items())


@pytest.mark.parametrize("error", [Fault, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
@pytest.mark.parametrize("where", ["batch", "loss-or-measurement"])
def test_iterate_interrupted_anywhere_stays_exactly_at_its_last_completed_step(mlp, mlp_data, error, where):
    start = pl.Pruner(copy.deepcopy(mlp), mlp_data, train_data=mlp_data).prune(0.3)
    records = record_iterate(start)  # the reference: states after each step of an uninterrupted run
    assert len(records) == 3         # step 0 (nothing to apply), then 2 steps
    total_batches, total_calls = records[-1][0], records[-1][1]
    first = records[0][2]
    at_batch = where == "batch"
    for k in range(1, (total_batches if at_batch else total_calls) + 1):
        calls: list = []
        p = pl.Pruner(copy.deepcopy(mlp), mlp_data, train_data=mlp_data).prune(0.3)
        arm(p, calls, fail_at=None if at_batch else k, error=error)
        hooks = Hooks(progress=raise_at(k, error("injected"))) if at_batch else None
        with pytest.raises((error, ValueError), match="injected"):  # or named by a check that met it
            retrain.iterate(p, 0.8, hooks=hooks, **ITERATE)
        reached = [r for r in records if (r[0] if at_batch else r[1]) < k]
        assert_state(p, reached[-1][2] if reached else first)
