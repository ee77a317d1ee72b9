"""Sensitivity analysis per layer, executors (in-process, threads, a real Dask cluster), allocation."""

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import prunelab as pl
from prunelab.sensitivity import DEFAULT_SPARSITIES, SensitivityTable, choose_sparsities

ROOT = Path(__file__).resolve().parents[1]
SPARSITIES = [0.5, 0.8, 0.9, 0.95]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train fastest on one thread


def test_table_measures_each_layer_alone(mlp_demo_pruner):
    dense = mlp_demo_pruner.evaluate().accuracy
    table = mlp_demo_pruner.sensitivity(SPARSITIES)
    assert isinstance(table, SensitivityTable)
    assert table.columns == ["layer", "sparsity", "accuracy", "drop"]
    assert [(r["layer"], r["sparsity"]) for r in table] == [(l, s) for l in ("0", "2", "4") for s in SPARSITIES]
    assert table.baseline == dense
    for row in table:
        assert row["drop"] == pytest.approx(dense - row["accuracy"])
        # the same number as pruning that layer alone in the Pruner and measuring
        mlp_demo_pruner.prune({row["layer"]: row["sparsity"]})
        assert mlp_demo_pruner.evaluate().accuracy == row["accuracy"]
        mlp_demo_pruner.reset()
    s, d = table.curve("0")
    assert s == SPARSITIES and d[-1] > d[0]  # 95% of the first layer hurts more than 50%


def test_sensitivity_leaves_the_pruner_as_it_was(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.6)
    masks, weights = mlp_demo_pruner.masks(), {n: p.clone() for n, p in mlp_demo_pruner.model.named_parameters()}
    calls = []
    mlp_demo_pruner.on_change(lambda: calls.append(1))
    mlp_demo_pruner.sensitivity(SPARSITIES)
    assert calls == [] and not mlp_demo_pruner.can_redo
    assert all(torch.equal(mlp_demo_pruner.masks()[n], m) for n, m in masks.items())
    assert all(torch.equal(p, weights[n]) for n, p in mlp_demo_pruner.model.named_parameters())


def test_reference_is_the_unpruned_current_weights(mlp_demo_pruner):
    mlp_demo_pruner.prune(0.9)
    table = mlp_demo_pruner.sensitivity([0.5], layers=["4"])
    mlp_demo_pruner.reset()
    assert table.baseline == mlp_demo_pruner.evaluate().accuracy


def test_results_are_cached_per_weights_and_arguments(mlp_demo_pruner):
    first = mlp_demo_pruner.sensitivity(SPARSITIES)
    assert mlp_demo_pruner.sensitivity(SPARSITIES) is first
    assert mlp_demo_pruner.sensitivity([0.5, 0.9]) is not first
    assert mlp_demo_pruner.sensitivity(SPARSITIES, criterion="random") is not first
    mlp_demo_pruner.prune(0.5)
    assert mlp_demo_pruner.sensitivity(SPARSITIES) is first  # masks do not change the reference
    mlp_demo_pruner.finetune(1, progress=False)
    retrained = mlp_demo_pruner.sensitivity(SPARSITIES)
    assert retrained is not first and retrained.baseline != first.baseline or retrained.rows != first.rows
    mlp_demo_pruner.undo()
    assert mlp_demo_pruner.sensitivity(SPARSITIES) is first


class RecordingPool(ThreadPoolExecutor):
    """A thread pool that records what it was given and on which thread each task ran."""

    def __init__(self, workers):
        super().__init__(workers, thread_name_prefix="recording-pool")
        self.submitted, self.ran_on = [], []

    def submit(self, fn, *args, **kwargs):
        self.submitted.append(fn.__name__)

        def task():
            self.ran_on.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        return super().submit(task)


def test_thread_pool_gives_the_same_table(mlp_demo_pruner):
    here = mlp_demo_pruner.sensitivity(SPARSITIES)
    with RecordingPool(2) as pool:
        val = (mlp_demo_pruner.val_inputs, mlp_demo_pruner.val_targets)
        fresh = pl.Pruner(copy.deepcopy(mlp_demo_pruner.model), val).sensitivity(SPARSITIES, executor=pool)
    assert fresh.rows == here.rows and fresh.baseline == here.baseline
    # the work went to the pool: the baseline and one task per layer, each on a pool thread
    assert pool.submitted == ["evaluate_masked"] * (1 + len(mlp_demo_pruner.layer_names))
    assert len(pool.ran_on) == len(pool.submitted) and all(t.startswith("recording-pool") for t in pool.ran_on)


def test_structured_sensitivity_skips_layers_that_cannot_lose_units(mlp_demo_pruner):
    table = mlp_demo_pruner.sensitivity([0.25, 0.5], granularity="structured")
    assert table.layers == ["0", "2"]
    assert table.weights == {"0": 300, "2": 100}
    with pytest.raises(ValueError, match="cannot be pruned structurally"):
        mlp_demo_pruner.sensitivity([0.5], layers=["4"], granularity="structured")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(sparsities=[]), ValueError, "empty"),
    (dict(sparsities=[0.5, 1.2]), ValueError, "fraction"),
    (dict(layers=["O"]), ValueError, "unknown layer"),
    (dict(criterion="magnitud"), ValueError, "unknown criterion"),
    (dict(granularity="2:4"), ValueError, "2:4"),
    (dict(executor=object()), TypeError, "Executor"),
])
def test_bad_arguments_say_what_to_do(mlp_demo_pruner, kwargs, error, match):
    with pytest.raises(error, match=match):
        mlp_demo_pruner.sensitivity(**({"sparsities": [0.5]} | kwargs))


# ---------------------------------------------------------------------- allocation

def synthetic(curves, weights):
    rows = [dict(layer=l, sparsity=s, accuracy=0.9 - d, drop=d) for l, pts in curves.items() for s, d in pts]
    return SensitivityTable(rows, baseline=0.9, criterion="magnitude", granularity="unstructured", weights=weights)


def test_choose_prunes_the_least_sensitive_layer_most():
    table = synthetic({"a": [(0.5, 0.0), (0.9, 0.01)], "b": [(0.5, 0.05), (0.9, 0.3)]}, {"a": 100, "b": 100})
    chosen, drops = choose_sparsities(table, target_sparsity=0.5)
    assert chosen["a"] == pytest.approx(0.9) and chosen["b"] == pytest.approx(0.1)
    assert drops["b"] == pytest.approx(0.01)  # interpolated on b's curve between 0 and 0.5
    chosen, drops = choose_sparsities(table, max_drop=0.02)
    assert chosen["a"] == pytest.approx(0.9) and sum(drops.values()) == pytest.approx(0.02)


def test_choose_weighs_layers_by_size_and_rejects_unreachable_targets():
    # the same drop per layer: the big layer gives more sparsity for it
    table = synthetic({"big": [(0.5, 0.01)], "small": [(0.5, 0.01)]}, {"big": 900, "small": 100})
    chosen, _ = choose_sparsities(table, target_sparsity=0.45)
    assert chosen == pytest.approx({"big": 0.5, "small": 0.0})
    with pytest.raises(ValueError, match="at most 50.0%"):
        choose_sparsities(table, target_sparsity=0.6)
    with pytest.raises(ValueError, match="either target_sparsity"):
        choose_sparsities(table)


def test_allocate_reaches_the_target_and_reports_joint_accuracy(mlp_demo_pruner):
    table = mlp_demo_pruner.sensitivity()
    one_shot = mlp_demo_pruner.prune(0.8).evaluate().accuracy
    mlp_demo_pruner.reset()
    result = mlp_demo_pruner.allocate(target_sparsity=0.8, table=table)
    assert mlp_demo_pruner.overall_sparsity() == pytest.approx(0.8, abs=1e-3) == result.sparsity
    assert result.accuracy == mlp_demo_pruner.evaluate().accuracy
    assert result.predicted_drop == pytest.approx(sum(result.single_drops.values()))
    assert result.drop == pytest.approx(table.baseline - result.accuracy)
    assert result.accuracy >= one_shot  # sensitivity-aware allocation beats one global threshold here
    assert set(result.sparsities) == {"0", "2", "4"}
    text = str(result)
    assert "sum of single-layer drops" in text and "measured jointly" in text


def plain_accuracy(model, masks, x, y) -> float:
    """Top-1 accuracy of a copy of ``model`` with ``masks`` multiplied in: a plain loop, not the Pruner's."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in masks:
                p.mul_(masks[name])
        return (model(x).argmax(1) == y).float().mean().item()


def test_allocate_within_a_drop_budget_reports_the_drop_measured_jointly(mlp_demo_pruner):
    with mlp_demo_pruner.dense():
        dense_model = copy.deepcopy(mlp_demo_pruner.model)
    x, y = mlp_demo_pruner.val_inputs, mlp_demo_pruner.val_targets
    result = mlp_demo_pruner.allocate(max_drop=0.01)
    assert result.predicted_drop <= 0.01 + 1e-9  # the curves' sum stays within the budget
    assert mlp_demo_pruner.overall_sparsity() > 0.5
    # what is promised: the accuracy and drop measured with every layer pruned together, here
    # measured again independently of the Pruner (a copy of the model, the masks multiplied in)
    joint = plain_accuracy(dense_model, mlp_demo_pruner.masks(), x, y)
    baseline = plain_accuracy(dense_model, {}, x, y)
    assert result.accuracy == pytest.approx(joint, abs=0.5 / len(y))
    assert result.baseline == pytest.approx(baseline, abs=0.5 / len(y))
    assert result.drop == pytest.approx(baseline - joint, abs=1 / len(y))
    assert f"{result.accuracy:.2%}" in str(result) and "measured jointly" in str(result)


def test_allocate_structured(mlp_demo_pruner):
    table = mlp_demo_pruner.sensitivity([0.25, 0.5, 0.75], granularity="structured")
    result = mlp_demo_pruner.allocate(target_sparsity=0.5, table=table)
    removed = sum(int((~mlp_demo_pruner.plans[n].keep).sum()) for n in ("0", "2"))
    assert removed == pytest.approx(200, abs=1)
    assert result.granularity == "structured"


# ---------------------------------------------------------------------- transactions (issue 10)

class Fault(Exception):
    pass


def state(p) -> dict:
    """What sensitivity and allocate must leave as they were: parameters and buffers (bits), each
    module's flag, the history (the same step objects), plans and masks."""
    return dict(tensors={k: v.clone() for k, v in p.model.state_dict().items()},
                flags=[m.training for m in p.model.modules()], steps=p.history.steps, held=len(p.history),
                plans=dict(p.plans), masks=p.masks())


def assert_state(p, before) -> None:
    after = p.model.state_dict()
    assert all(torch.equal(after[k].view(torch.uint8) if after[k].is_floating_point() else after[k],
                           v.view(torch.uint8) if v.is_floating_point() else v) for k, v in before["tensors"].items())
    assert [m.training for m in p.model.modules()] == before["flags"]
    assert len(p.history) == before["held"]
    assert all(a is b for a, b in zip(p.history.steps, before["steps"], strict=True))
    assert p.plans.keys() == before["plans"].keys() and all(p.plans[n] is v for n, v in before["plans"].items())
    assert all(torch.equal(p.masks()[n], k) for n, k in before["masks"].items())


class FaultyExecutor:
    """Runs tasks here, in turn, and raises ``error`` at the ``fail_at``-th submit (a worker lost,
    a Ctrl-C while waiting)."""

    def __init__(self, fail_at=None, error=Fault):
        self.fail_at, self.error, self.submitted = fail_at, error, 0

    def submit(self, fn, *args, **kwargs):
        from concurrent.futures import Future
        self.submitted += 1
        if self.submitted == self.fail_at:
            raise self.error("injected")
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def tripwire_metric(calls: list, fail_at=None, error=Fault):
    def metric(out, y):
        calls.append(1)
        if len(calls) == fail_at:
            raise error("injected")
        return float((out.argmax(1) == y).float().mean())
    return metric


@pytest.fixture
def small(mlp, mlp_data):
    """The small core MLP, 40% pruned (a history with one step)."""
    return pl.Pruner(mlp, mlp_data).prune(0.4)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: p.allocate(), ValueError, "either target_sparsity"),
    (lambda p: p.allocate(target_sparsity=0.5, max_drop=0.01), ValueError, "not both"),
    (lambda p: p.allocate(target_sparsity=1.5), ValueError, "target_sparsity"),
    (lambda p: p.allocate(max_drop=-0.1), ValueError, "max_drop"),
    (lambda p: p.allocate(target_sparsity=0.5, executor=object()), TypeError, "Executor"),
    (lambda p: p.allocate(target_sparsity=0.5, table=[1, 2]), TypeError, "pruner.sensitivity"),
    (lambda p: p.allocate(target_sparsity=0.5, table=synthetic({"fc9": [(0.5, 0.0)]}, {"fc9": 10})), ValueError,
     "does not have"),
    (lambda p: p.sensitivity([0.5], layers=["O"]), ValueError, "unknown layer"),
    (lambda p: p.sensitivity([0.5], criterion="magnitud"), ValueError, "unknown criterion"),
], ids=["neither", "both", "target", "drop", "executor", "table-type", "table-layers", "layer", "criterion"])
def test_bad_arguments_are_refused_before_any_copy_or_analysis(small, monkeypatch, call, error, match):
    from prunelab.core.copies import PrunerCopy

    before = state(small)
    monkeypatch.setattr(PrunerCopy, "of", classmethod(lambda cls, p: pytest.fail("copied before checking")))
    with pytest.raises(error, match=match):
        call(small)
    assert_state(small, before)


@pytest.mark.parametrize("error", [Fault, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
def test_sensitivity_interrupted_at_any_task_leaves_the_pruner_and_its_cache_as_they_were(small, error):
    tasks = 1 + len(small.layer_names)  # the reference, then one task per layer
    before = state(small)
    for k in range(1, tasks + 1):
        with pytest.raises((error, ValueError), match="injected"):  # or named by a check that met it
            small.sensitivity([0.5, 0.9], executor=FaultyExecutor(k, error))
        assert_state(small, before)
    clean = FaultyExecutor()
    table = small.sensitivity([0.5, 0.9], executor=clean)
    assert clean.submitted == tasks  # nothing half-done was cached: it measured afresh
    assert small.sensitivity([0.5, 0.9]) is table  # and a finished analysis is
    small.reset()
    assert table.baseline == small.evaluate().accuracy


@pytest.mark.parametrize("error", [Fault, KeyboardInterrupt], ids=["exception", "keyboard-interrupt"])
def test_allocate_interrupted_at_any_measurement_leaves_the_pruner_exactly_as_it_was(mlp, mlp_data, error):
    def fresh(calls, fail_at=None):  # a Pruner of its own each time: nothing cached from the last run
        p = pl.Pruner(copy.deepcopy(mlp), mlp_data, metric=tripwire_metric(calls)).prune(0.4)
        p.evaluate()
        calls.clear()
        p.metric = tripwire_metric(calls, fail_at, error)
        return p

    calls: list = []
    p = fresh(calls)
    result = p.allocate(target_sparsity=0.6)
    n = len(calls)  # every measurement of the analysis, and the joint one
    assert n == 1 + 3 * len(DEFAULT_SPARSITIES) + 1
    assert result.accuracy == p.evaluate().accuracy
    for k in range(1, n + 1):
        p = fresh(calls, fail_at=k)
        before = state(p)
        with pytest.raises((error, ValueError), match="injected"):  # or named by a check that met it
            p.allocate(target_sparsity=0.6)
        assert_state(p, before)


def test_allocate_applies_exactly_what_it_measured(small):
    result = small.allocate(target_sparsity=0.6, table=small.sensitivity([0.3, 0.6, 0.9]))
    assert small.evaluate().accuracy == result.accuracy
    assert small.overall_sparsity() == result.overall_sparsity
    assert small.can_undo and len(small.history) == 3  # the original, prune(0.4), the allocation: one step


# ---------------------------------------------------------------------- a real Dask cluster

@pytest.mark.slow
def test_dask_cluster_gives_the_same_table(mlp_demo_pruner, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    # workers are new processes: they must import this prunelab
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    here = mlp_demo_pruner.sensitivity(SPARSITIES)
    other = pl.Pruner(copy.deepcopy(mlp_demo_pruner.model), (mlp_demo_pruner.val_inputs, mlp_demo_pruner.val_targets))
    cluster_options = dict(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    with distributed.LocalCluster(**cluster_options) as cluster, distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as stream:
            remote = other.sensitivity(SPARSITIES, executor=client.get_executor())
    tasks = [t for t in stream.data if "evaluate_masked" in t["key"]]
    assert len(tasks) == 4  # the baseline and one per layer, all run by the workers
    assert len({t["worker"] for t in tasks}) == 2
    assert remote.rows == here.rows and remote.baseline == here.baseline
