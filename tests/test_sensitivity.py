"""Sensitivity analysis per layer, executors (in-process, threads, a real Dask cluster), allocation."""

import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import prunelab as pl
from prunelab.sensitivity import SensitivityTable, choose_sparsities

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
