"""Fine-tuning with masks held, gradual pruning schedules, regrowth, cancellation."""

import os
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab import retrain
from prunelab.retrain import Cancelled, Hooks, sparsity_schedule
from prunelab.retrain.loop import Batches, train_masked
from prunelab.retrain.regrow import regrow_masks

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def assert_pruned_bits_zero(pruner):
    params = dict(pruner.model.named_parameters())
    for name, keep in pruner.masks().items():
        assert bool((bits(params[name])[~keep] == 0).all()), f"{name}: a pruned weight is not +0.0"


def weights_bits(pruner) -> dict:
    """The model's parameters as raw bits, for exact comparisons (-0.0 and NaN included)."""
    return {n: bits(p).flatten().tolist() for n, p in pruner.model.named_parameters()}


def dense_bits(pruner) -> dict:
    with pruner.dense():
        return weights_bits(pruner)


def state_snapshot(pruner):
    return ({n: p.detach().clone() for n, p in pruner.model.named_parameters()}, pruner.masks(),
            pruner.can_undo, len(pruner.plans))


def assert_same_state(pruner, snap):
    weights, masks, can_undo, n_plans = snap
    for n, p in pruner.model.named_parameters():
        assert torch.equal(p, weights[n]), n
    assert pruner.masks().keys() == masks.keys()
    assert all(torch.equal(pruner.masks()[n], m) for n, m in masks.items())
    assert (pruner.can_undo, len(pruner.plans)) == (can_undo, n_plans)


# ---------------------------------------------------------------------- schedules

def test_agp_schedule_is_zhu_and_gupta_cubic():
    s = sparsity_schedule(0.0, 0.9, 4, "agp")
    expected = [0.9 - 0.9 * (1 - t / 4) ** 3 for t in range(1, 5)]
    assert s == pytest.approx(expected)
    assert s[-1] == 0.9
    steps = [b - a for a, b in zip([0.0] + s, s)]
    assert steps == sorted(steps, reverse=True)  # prunes fast first, slowly near the target


def test_linear_and_constant_schedules():
    assert sparsity_schedule(0.2, 0.8, 3, "linear") == pytest.approx([0.4, 0.6, 0.8])
    assert sparsity_schedule(0.2, 0.8, 3, "constant") == [0.8, 0.8, 0.8]


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="cubic"), "unknown schedule"),
    (dict(steps=0), "steps must be"),
    (dict(steps=2.5), "steps must be"),
])
def test_schedule_rejects_bad_arguments(kwargs, match):
    args = dict(start=0.0, target=0.9, steps=3, schedule="agp") | kwargs
    with pytest.raises(ValueError, match=match):
        sparsity_schedule(**args)


# ---------------------------------------------------------------------- fine-tuning

def test_finetune_recovers_accuracy_as_one_undoable_step(mlp_demo_pruner):
    original = {n: p.detach().clone() for n, p in mlp_demo_pruner.model.named_parameters()}
    mlp_demo_pruner.prune(0.9)
    pruned_acc = mlp_demo_pruner.evaluate().accuracy
    masks = mlp_demo_pruner.masks()
    result = mlp_demo_pruner.finetune(3, progress=False)
    assert result.accuracy_before == pruned_acc
    assert result.accuracy_after == mlp_demo_pruner.evaluate().accuracy
    assert result.accuracy_after > pruned_acc  # training recovers what pruning lost
    assert len(result.train_loss) == 3 and result.train_loss[-1] < result.train_loss[0]
    assert all(torch.equal(mlp_demo_pruner.masks()[n], m) for n, m in masks.items())
    assert_pruned_bits_zero(mlp_demo_pruner)
    assert mlp_demo_pruner.undo()
    assert mlp_demo_pruner.evaluate().accuracy == pruned_acc
    mlp_demo_pruner.reset()
    assert all(torch.equal(p, original[n]) for n, p in mlp_demo_pruner.model.named_parameters())


def test_undo_of_a_finetune_is_bit_for_bit_and_redo_brings_it_back(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.8)
    before = weights_bits(mlp_demo_pruner)
    before_dense = dense_bits(mlp_demo_pruner)
    mlp_demo_pruner.finetune(1, progress=False)
    tuned, tuned_dense = weights_bits(mlp_demo_pruner), dense_bits(mlp_demo_pruner)
    tuned_version = mlp_demo_pruner.weights_version
    assert tuned != before
    assert mlp_demo_pruner.undo()
    # exactly the weights before
    assert weights_bits(mlp_demo_pruner) == before and dense_bits(mlp_demo_pruner) == before_dense
    assert mlp_demo_pruner.can_redo and mlp_demo_pruner.redo()
    # exactly the fine-tuned ones
    assert weights_bits(mlp_demo_pruner) == tuned and dense_bits(mlp_demo_pruner) == tuned_dense
    assert mlp_demo_pruner.weights_version == tuned_version and not mlp_demo_pruner.can_redo


def test_finetune_defaults_are_written_once_in_the_settings():
    import inspect

    from prunelab.retrain import FinetuneSettings, IterateSettings

    def defaults(fn):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty and n not in ("progress", "hooks")}

    fields = {f: getattr(FinetuneSettings, f) for f in ("epochs", "lr", "optimizer", "batch_size")}
    assert defaults(retrain.finetune) == fields == defaults(pl.Pruner.finetune)
    iterate = defaults(retrain.iterate)
    assert iterate == {f: getattr(IterateSettings, f) for f in iterate} == defaults(pl.Pruner.iterate)
    with pytest.raises(TypeError):
        FinetuneSettings(3)  # keyword-only


def test_finetuned_weights_keep_pruned_entries_zero_in_the_unmasked_weights(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.8)
    mlp_demo_pruner.finetune(1, progress=False)
    masks = mlp_demo_pruner.masks()
    with mlp_demo_pruner.dense():
        params = dict(mlp_demo_pruner.model.named_parameters())
        for name, keep in masks.items():
            assert bool((bits(params[name])[~keep] == 0).all())
    # so a gradual schedule only adds to the pruned set: ranking again keeps them pruned first
    mlp_demo_pruner.prune(0.85)
    for name, keep in masks.items():
        assert not bool((mlp_demo_pruner.masks()[name] & ~keep).any())


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_masked_weights_and_optimizer_state_stay_exactly_zero(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    masks = {"0.weight": torch.rand(16, 8) > 0.7, "2.weight": torch.rand(3, 16) > 0.5}
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    made = []

    def factory(params, lr):
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[optimizer]
        extra = {"momentum": 0.9, "weight_decay": 0.01} if optimizer == "sgd" else {"weight_decay": 0.01}
        made.append(cls(params, lr=lr, **extra))
        return made[-1]

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_masked(model, masks, Batches((x, y), 16, "cpu"), nn.functional.cross_entropy, epochs=3, lr=1e-2,
                 optimizer=factory)
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        assert bool((bits(params[name])[~keep] == 0).all())
        assert not torch.equal(params[name][keep], before[name][keep])  # the kept ones did train
        for value in made[0].state[params[name]].values():
            if isinstance(value, torch.Tensor) and value.shape == keep.shape:
                assert bool((bits(value)[~keep] == 0).all())


def test_finetune_accepts_a_torch_optim_class_and_a_factory(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.5)
    mlp_demo_pruner.finetune(1, optimizer=torch.optim.RMSprop, lr=1e-4, progress=False)
    mlp_demo_pruner.finetune(1, optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr), lr=1e-3, progress=False)
    assert_pruned_bits_zero(mlp_demo_pruner)


def test_finetune_is_deterministic(mlp_demo_pruner):
    results = []
    d = pl.demos.load("digits-mlp")  # a second copy of its own, to compare with
    for p in (mlp_demo_pruner, pl.Pruner(d.model, d.val, train_data=d.train)):
        p.prune(0.7)
        p.finetune(1, progress=False)
        results.append({n: t.detach().clone() for n, t in p.model.named_parameters()})
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])


@pytest.mark.parametrize("kind", ["dataloader", "dataset", "tensors"])
def test_finetune_takes_every_kind_of_train_data(mlp_demo, kind):
    x, y = mlp_demo.train.tensors
    data = {"dataloader": torch.utils.data.DataLoader(mlp_demo.train, batch_size=128, shuffle=True),
            "dataset": torch.utils.data.Subset(mlp_demo.train, range(len(y))), "tensors": (x, y)}[kind]
    p = pl.Pruner(mlp_demo.model, mlp_demo.val, train_data=data)
    p.prune(0.9)
    before = p.evaluate().accuracy
    assert p.finetune(2, progress=False).accuracy_after > before


def test_finetune_without_train_data_says_what_to_do(mlp_demo):
    p = pl.Pruner(mlp_demo.model, mlp_demo.val)
    p.prune(0.5)
    snap = state_snapshot(p)
    with pytest.raises(ValueError, match="train_data="):
        p.finetune(1, progress=False)
    with pytest.raises(ValueError, match="train_data="):
        p.iterate(0.9, progress=False)
    assert_same_state(p, snap)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(lr=0), ValueError, "lr must be"),
    (dict(lr=float("nan")), ValueError, "lr must be"),
    (dict(optimizer="adamm"), ValueError, "unknown optimizer"),
    (dict(optimizer=42), TypeError, "optimizer must be"),
    (dict(batch_size=0), ValueError, "batch_size"),
])
def test_finetune_bad_arguments_change_nothing(mlp_demo_pruner, kwargs, error, match):
    mlp_demo_pruner.prune(0.5)
    snap = state_snapshot(mlp_demo_pruner)
    with pytest.raises(error, match=match):
        mlp_demo_pruner.finetune(**({"epochs": 1} | kwargs), progress=False)
    assert_same_state(mlp_demo_pruner, snap)


def test_an_optimizer_instance_is_refused_with_the_reason(mlp_demo_pruner):
    opt = torch.optim.Adam(mlp_demo_pruner.model.parameters())
    with pytest.raises(TypeError, match="private copy"):
        mlp_demo_pruner.finetune(1, optimizer=opt, progress=False)


def test_finetune_leaves_batchnorm_statistics_alone(cnn_demo_pruner):
    p = cnn_demo_pruner
    p.prune(0.5, granularity="structured")
    stats = {n: b.clone() for n, b in p.model.named_buffers()}
    before = p.evaluate().accuracy
    p.finetune(1, progress=False)
    assert all(torch.equal(b, stats[n]) for n, b in p.model.named_buffers())
    assert_pruned_bits_zero(p)  # structured masks cover BatchNorm weight and bias too
    assert p.evaluate().accuracy >= before - 0.02
    assert p.model.training is False  # the user's model keeps its mode


def test_a_job_run_on_a_worker_thread_equals_finetune(mlp_demo_pruner):
    pruners = []
    d = pl.demos.load("digits-mlp")  # a second copy of its own, to compare with
    for p in (mlp_demo_pruner, pl.Pruner(d.model, d.val, train_data=d.train)):
        p.prune(0.7)
        pruners.append(p)
    retrain.finetune(pruners[0], 1, progress=False)
    job = retrain.FinetuneJob(pruners[1], retrain.FinetuneSettings(epochs=1)).prepare()
    untouched, version = weights_bits(pruners[1]), pruners[1].weights_version
    worker = threading.Thread(target=job.run)
    worker.start()
    worker.join()
    assert (weights_bits(pruners[1]), pruners[1].weights_version) == (untouched, version)  # nothing applied yet
    result = job.apply()
    assert weights_bits(pruners[0]) == weights_bits(pruners[1])  # one path, whichever thread trains
    assert result.accuracy_after == pruners[0].evaluate().accuracy


def test_cancelled_finetune_leaves_the_pruner_unchanged(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.8)
    snap = state_snapshot(mlp_demo_pruner)
    cancel = threading.Event()
    hooks = Hooks(progress=lambda done, total, what: cancel.set() if done == 3 else None, cancel=cancel)
    with pytest.raises(Cancelled):
        retrain.finetune(mlp_demo_pruner, 2, hooks=hooks, progress=False)
    assert_same_state(mlp_demo_pruner, snap)


# ---------------------------------------------------------------------- iterative pruning

def test_iterate_reaches_the_target_step_by_step(mlp_demo_pruner):
    seen = []
    mlp_demo_pruner.on_change(lambda: seen.append(mlp_demo_pruner.masks()))
    history = mlp_demo_pruner.iterate(0.9, steps=3, epochs_per_step=1, final_epochs=1, progress=False)
    assert [r["step"] for r in history] == [0, 1, 2, 3]
    assert list(history.columns) == ["step", "target", "sparsity", "accuracy_before", "accuracy_after",
                                     "nonzero_params", "regrown", "seconds"]
    targets = sparsity_schedule(0.0, 0.9, 3, "agp")
    assert history.column("target")[1:] == pytest.approx(targets)
    assert history.column("sparsity")[1:] == pytest.approx(targets, abs=1e-4)
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(0.9, abs=1e-4)
    last = history[-1]
    m = mlp_demo_pruner.evaluate()
    assert (last["accuracy_after"], last["nonzero_params"]) == (m.accuracy, m.nonzero_params)
    assert all(r["accuracy_after"] >= r["accuracy_before"] - 0.01 for r in history[1:])
    assert all(r["seconds"] > 0 for r in history[1:])
    # one history step per iterate step, and the pruned sets only grow
    assert len(seen) == 3
    for before, after in zip(seen, seen[1:]):
        for name, keep in after.items():
            if name in before:
                assert not bool((keep & ~before[name]).any())
    assert_pruned_bits_zero(mlp_demo_pruner)
    assert "| step |" in str(history) and "<table>" in history._repr_html_()
    mlp_demo_pruner.undo()
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(targets[1], abs=1e-4)


def test_iterate_continues_from_the_current_sparsity(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.5)
    history = mlp_demo_pruner.iterate(0.8, steps=2, epochs_per_step=1, final_epochs=0, schedule="linear",
                                      progress=False)
    assert history.column("target") == pytest.approx([0.5, 0.65, 0.8], abs=1e-4)
    with pytest.raises(ValueError, match="already pruned to 80.0%"):
        mlp_demo_pruner.iterate(0.6, steps=2, progress=False)


def test_iterate_structured_removes_units(mlp_demo_pruner):
    history = mlp_demo_pruner.iterate(0.5, granularity="structured", steps=2, epochs_per_step=1, final_epochs=0,
                             progress=False)
    assert set(p.granularity for p in mlp_demo_pruner.plans.values()) == {"structured"}
    removed = sum(int((~p.keep).sum()) for n, p in mlp_demo_pruner.plans.items())
    units = sum(l.units for l in mlp_demo_pruner.layers if l.name not in mlp_demo_pruner.structured_blocked)
    assert removed == units // 2  # half of the hidden units
    assert history[-1]["accuracy_after"] > history[-1]["accuracy_before"]  # the step's fine-tuning helped
    assert_pruned_bits_zero(mlp_demo_pruner)


def test_iterate_uses_the_criterion_and_granularity_in_effect(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.3, criterion="random", granularity="structured")
    mlp_demo_pruner.iterate(0.5, steps=1, epochs_per_step=1, final_epochs=0, progress=False)
    assert {(p.criterion, p.granularity) for p in mlp_demo_pruner.plans.values()} == {("random", "structured")}


def test_iterate_per_layer_targets(mlp_demo_pruner):
    mlp_demo_pruner.iterate({"0": 0.9, "2": 0.5}, steps=2, epochs_per_step=1, final_epochs=0, progress=False)
    s = mlp_demo_pruner.sparsity()
    assert s["0"] == pytest.approx(0.9, abs=1e-3) and s["2"] == pytest.approx(0.5, abs=1e-3) and s["4"] == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=1.5), "fraction"),
    (dict(target={"9": 0.5}), "unknown layers"),
    (dict(target=0.5, schedule="cubic"), "unknown schedule"),
    (dict(target=0.5, regrow=1.0), "regrow must be"),
    (dict(target=0.5, regrow=0.1, granularity="structured"), "unstructured"),
    (dict(target=0.5, granularity="2:4"), "2:4"),
    (dict(target=0.5, epochs_per_step=-1), "epochs_per_step"),
])
def test_iterate_bad_arguments_change_nothing(mlp_demo_pruner, kwargs, match):
    snap = state_snapshot(mlp_demo_pruner)
    with pytest.raises(ValueError, match=match):
        mlp_demo_pruner.iterate(**kwargs, progress=False)
    assert_same_state(mlp_demo_pruner, snap)


def test_cancelled_iterate_stays_at_the_last_completed_step(mlp_demo_pruner):
    cancel = threading.Event()
    batches = len(Batches(mlp_demo_pruner.train_data, retrain.IterateSettings.batch_size, "cpu"))
    hooks = Hooks(progress=lambda done, total, what: cancel.set() if done == batches + 2 else None, cancel=cancel)
    with pytest.raises(Cancelled):
        retrain.iterate(mlp_demo_pruner, 0.9, steps=3, epochs_per_step=1, final_epochs=0, hooks=hooks, progress=False)
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(sparsity_schedule(0, 0.9, 3)[0], abs=1e-4)
    assert mlp_demo_pruner.undo() and not mlp_demo_pruner.can_undo  # exactly one completed step was applied


# ---------------------------------------------------------------------- regrowth

def test_regrow_swaps_smallest_kept_for_largest_gradient_pruned():
    keep = torch.tensor([True, True, True, True, False, False, False, False])
    weights = torch.tensor([0.1, -0.5, 0.9, 0.05, 0.0, 0.0, 0.0, 0.0])
    grads = torch.tensor([9.0, 9.0, 9.0, 9.0, 0.1, -3.0, 2.0, 0.5])
    new, grown = regrow_masks({"w": keep}, {"w": weights}, {"w": grads}, 0.5)
    assert grown == 2
    assert new["w"].tolist() == [False, True, True, False, False, True, True, False]
    assert int(new["w"].sum()) == int(keep.sum())


def test_iterate_with_regrowth_keeps_the_sparsity_and_trains_regrown_weights(mlp_demo_pruner):
    history = mlp_demo_pruner.iterate(0.9, steps=2, epochs_per_step=1, final_epochs=0, regrow=0.1, progress=False)
    assert all(r["regrown"] > 0 for r in history[1:])
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(0.9, abs=1e-4)
    assert history[-1]["accuracy_after"] > history[-1]["accuracy_before"]
    assert_pruned_bits_zero(mlp_demo_pruner)


def test_constant_schedule_with_regrowth_changes_the_mask_at_fixed_sparsity(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.8)
    before = mlp_demo_pruner.masks()
    history = mlp_demo_pruner.iterate(0.8, steps=2, epochs_per_step=1, final_epochs=0, schedule="constant", regrow=0.2,
                             progress=False)
    assert history.column("sparsity") == pytest.approx([0.8] * 3, abs=1e-4)
    after = mlp_demo_pruner.masks()
    assert any(not torch.equal(after[n], before[n]) for n in before)
