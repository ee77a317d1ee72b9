"""Each table against an independent computation: its own pruning and its own loop over model(x),
real file sizes read from the disk, FLOP shares from torch's FlopCounterMode."""

import copy
import csv
import io
import os

import pytest
import torch
from torch import nn

from prunelab import Pruner, Table, demos, load_structured


def own_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        model.eval()
        pred = torch.cat([model(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)])
    return (pred == y).float().mean().item()


def own_global_magnitude(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy of ``model`` with the ``sparsity`` smallest |w| of all Linear/Conv weights zeroed."""
    model = copy.deepcopy(model)
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if sparsity:
        flat = torch.cat([w.detach().abs().flatten() for w in weights])
        cut = flat.kthvalue(int(round(sparsity * len(flat)))).values
        with torch.no_grad():
            for w in weights:
                w.mul_(w.abs() > cut)
    return model


def nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def test_sparsity_table_matches_its_own_pruning_and_the_real_files(mlp_demo_pruner, mlp_demo, tmp_path):
    pruner = mlp_demo_pruner
    x, y = pruner.val_inputs, pruner.val_targets
    table = pruner.report("sparsity", sparsities=[0, 0.5, 0.9])
    assert [r["sparsity"] for r in table] == [0, 0.5, 0.9]
    dense = copy.deepcopy(mlp_demo.model)
    for row in table:
        own = own_global_magnitude(dense, row["sparsity"])
        assert row["accuracy"] == pytest.approx(own_accuracy(own, x, y), abs=1.5 / len(y))  # ties: a sample at most
        assert row["nonzero_params"] == pytest.approx(nonzero(own), abs=2)
        assert row["params"] == sum(p.numel() for p in dense.parameters())
        pruner.reset()
        if row["sparsity"]:
            pruner.prune(row["sparsity"])
        path = pruner.export(tmp_path / f"s{row['sparsity']}.safetensors", format="sparse").path
        assert row["file_mb"] * 1e6 == os.path.getsize(path)  # the real file's bytes
    assert table[0]["file_mb"] > table[1]["file_mb"] > table[2]["file_mb"]


def test_criteria_side_by_side(mlp_demo_pruner):
    table = mlp_demo_pruner.report("criteria", sparsities=[0, 0.9], criteria=["magnitude", "random"])
    assert table.columns == ["sparsity", "magnitude", "random"]
    same = mlp_demo_pruner.report("sparsity", sparsities=[0, 0.9], files=False)
    assert table.column("magnitude") == same.column("accuracy")
    assert table[0]["magnitude"] == table[0]["random"]  # nothing pruned: the same model
    assert table[1]["random"] < table[1]["magnitude"] - 0.2  # at 90%, random pruning is far worse


def test_layers_table_counts_the_models_own_zeros(cnn_demo_pruner):
    pruner = cnn_demo_pruner.prune(0.7)
    table = pruner.report("layers")
    modules = dict(pruner.model.named_modules())
    for row in table[:-1]:
        weight = modules[row["layer"]].weight
        assert row["connections_before"] == weight.numel()
        assert row["connections_after"] == int((weight != 0).sum())
        assert row["reduction"] == pytest.approx(1 - row["connections_after"] / weight.numel())
    assert table[-1]["layer"] == "total"
    assert table[-1]["reduction"] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.slow  # FlopCounterMode imports torch._dynamo: seconds
def test_layers_flop_shares_are_flopcounter_modes(cnn_demo_pruner):
    from torch.utils.flop_counter import FlopCounterMode

    pruner = cnn_demo_pruner.prune(0.7)
    table = pruner.report("layers")
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            pruner.model(pruner.val_inputs[:1])
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    for row in table[:-1]:
        counted = sum(by_module[f"Sequential.{row['layer']}"].values())
        assert row["flops_share"] == pytest.approx(counted / total, rel=1e-6)


def test_thresholds_table_matches_its_own_count(mlp_demo_pruner, mlp_demo):
    pruner = mlp_demo_pruner
    x, y = pruner.val_inputs, pruner.val_targets
    table = pruner.report("thresholds", thresholds=[0.02, 0.1])
    weights = [m.weight.detach() for m in mlp_demo.model.modules() if isinstance(m, nn.Linear)]
    for row in table:
        below = sum(int((w.abs() < row["threshold"]).sum()) for w in weights)
        assert row["sparsity"] == pytest.approx(below / sum(w.numel() for w in weights))
        own = copy.deepcopy(mlp_demo.model)
        with torch.no_grad():
            for m in own.modules():
                if isinstance(m, nn.Linear):
                    m.weight.mul_(m.weight.abs() >= row["threshold"])
        assert row["accuracy"] == pytest.approx(own_accuracy(own, x, y))
    default = pruner.report("thresholds", files=False)
    assert [round(s, 2) for s in default.column("sparsity")] == pytest.approx([0, 0.5, 0.8, 0.9, 0.95], abs=0.02)


def test_iterations_come_from_the_last_iterate_or_a_given_history(mlp_demo_pruner, one_thread):
    history = mlp_demo_pruner.iterate(0.8, steps=2, epochs_per_step=1, progress=False)
    table = mlp_demo_pruner.report("iterations")
    assert [r["step"] for r in table] == [0, 1, 2]
    assert table.column("sparsity") == history.column("sparsity")
    assert table.column("accuracy_after") == history.column("accuracy_after")
    assert table.column("elapsed") == pytest.approx(list(torch.tensor(history.column("seconds")).cumsum(0).tolist()))
    given = mlp_demo_pruner.report("iterations", history=history[:2])
    assert len(given) == 2
    with pytest.raises(ValueError, match="history must be the table iterate"):
        mlp_demo_pruner.report("iterations", history=[{"step": 0}])


def test_timing_times_every_stage(mlp_demo_pruner, mlp_demo):
    table = mlp_demo_pruner.report("timing", sparsity=0.5, formats=("sparse",))
    stages = table.column("stage")
    assert stages == ["score (magnitude)", "prune to 50%", "measure", "fine-tune (per epoch)", "export sparse"]
    assert all(s > 0 for s in table.column("seconds"))
    no_training = Pruner(copy.deepcopy(mlp_demo.model), mlp_demo.val).report("timing", formats=())
    assert no_training[3]["seconds"] is None and "no train_data" in no_training[3]["note"]


def test_inference_dense_pruned_structured_and_int8(cnn_demo_pruner, cnn_demo, tmp_path, one_thread):
    pruner = cnn_demo_pruner
    x, y = pruner.val_inputs, pruner.val_targets
    dense_accuracy = own_accuracy(copy.deepcopy(cnn_demo.model), x, y)
    pruner.prune(0.5, granularity="structured", scope="layer")
    table = pruner.report("inference", batch=32, repeats=3)
    rows = {r["model"]: r for r in table}
    assert list(rows)[:3] == ["dense", "pruned (masked)", "structured export"]
    assert rows["dense"]["accuracy"] == pytest.approx(dense_accuracy)
    assert rows["pruned (masked)"]["accuracy"] == pruner.evaluate().accuracy
    pruner.export(tmp_path / "small", format="structured")
    exported = load_structured(tmp_path / "small.safetensors", demos.architecture("digits-cnn"))
    assert rows["structured export"]["accuracy"] == pytest.approx(own_accuracy(exported, x, y), abs=1.5 / len(y))
    assert rows["structured export"]["flops_ratio"] > 1.5
    assert rows["dense"]["flops_ratio"] == 1.0 and rows["dense"]["speedup"] == 1.0
    assert all(r["latency_ms_1"] > 0 and r["throughput"] > 0 for r in table)
    assert "int8 (dynamic, Linear)" in rows  # digits-cnn ends in Linear layers; dynamic int8 runs on CPU
    assert abs(rows["int8 (dynamic, Linear)"]["accuracy"] - rows["pruned (masked)"]["accuracy"]) < 0.05


def test_inference_says_why_a_model_is_missing(mlp_demo_pruner):
    table = mlp_demo_pruner.prune(0.5).report("inference", batch=8, repeats=2, int8=False)
    assert table.column("model") == ["dense", "pruned (masked)"]
    assert "structured export skipped: no units are removed" in table.note


def test_size_table_is_the_real_files(cnn_demo_pruner, tmp_path):
    pruner = cnn_demo_pruner.prune(0.5, granularity="structured", scope="layer")
    table = pruner.report("size", formats=("state_dict", "sparse", "structured"))
    rows = {r["file"]: r for r in table}
    dense = rows["dense"]["mb"] * 1e6
    for fmt, ending in (("state_dict", ".safetensors"), ("sparse", ".safetensors")):
        path = pruner.export(tmp_path / f"m-{fmt}{ending}", format=fmt).path
        assert rows[fmt]["mb"] * 1e6 == os.path.getsize(path)
        assert rows[fmt]["reduction"] == pytest.approx(1 - os.path.getsize(path) / dense)
    files = pruner.export(tmp_path / "model-structured", format="structured").files  # the name is in its metadata
    assert rows["structured safetensors"]["mb"] * 1e6 == os.path.getsize(files[0])
    assert rows["structured pt2"]["mb"] * 1e6 == os.path.getsize(files[1])
    assert rows["sparse"]["reduction"] > 0.3 and rows["structured safetensors"]["reduction"] > 0.3


def test_compare_puts_saved_states_beside_the_model(mlp_demo_pruner, mlp_demo, tmp_path):
    from safetensors.torch import save_file

    x, y = mlp_demo_pruner.val_inputs, mlp_demo_pruner.val_targets
    noisy = copy.deepcopy(mlp_demo.model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    save_file({k: v.contiguous() for k, v in noisy.state_dict().items()}, str(tmp_path / "noisy.safetensors"))
    table = mlp_demo_pruner.report("compare", models={"noisy": tmp_path / "noisy.safetensors",
                                                      "module": copy.deepcopy(mlp_demo.model)},
                                   sparsity=0.9, repeats=2)
    rows = {r["model"]: r for r in table}
    assert list(rows) == ["this model", "noisy", "module"]
    assert rows["noisy"]["accuracy_before"] == pytest.approx(own_accuracy(noisy, x, y))
    assert rows["noisy"]["accuracy_after"] == pytest.approx(own_accuracy(own_global_magnitude(noisy, 0.9), x, y),
                                                            abs=1.5 / len(y))
    assert rows["module"]["accuracy_before"] == rows["this model"]["accuracy_before"]
    assert all(r["mb_after"] < r["mb_before"] for r in table)
    with pytest.raises(ValueError, match="no file"):
        mlp_demo_pruner.report("compare", models={"x": tmp_path / "missing.safetensors"})


def test_a_table_converts_and_renders(mlp_demo_pruner):
    table = mlp_demo_pruner.report("sparsity", sparsities=[0, 0.5], files=False)
    assert isinstance(table, Table) and table.rows[1]["sparsity"] == 0.5
    parsed = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert [float(r["accuracy"]) for r in parsed] == table.column("accuracy")
    assert list(parsed[0]) == table.columns
    markdown = table.to_markdown()
    assert str(table) == markdown and "| Pruned | Accuracy |" in markdown and "| 50% |" in markdown
    assert markdown.splitlines()[-1].startswith(f"Measured on {len(mlp_demo_pruner.val_targets)} validation samples")
    assert table.to_markdown(title=False).startswith("| Pruned |")
    html = table._repr_html_()
    assert "<th>Pruned</th>" in html and "<td>50%</td>" in html and "Measured on" in html
    frame = table.to_pandas()  # pandas is in the test extra, so this runs in CI
    assert list(frame["sparsity"]) == [0, 0.5] and list(frame.columns) == table.columns
