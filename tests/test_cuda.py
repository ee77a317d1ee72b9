"""The same Pruner on a CUDA device: masks, scores and evaluation stay on the model's device.

Skipped where no GPU is present (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""

import pytest
import torch

import prunelab as pl

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["digits-mlp", "digits-cnn"])
def gpu_and_cpu(request):
    demo = pl.demos.load(request.param)
    cpu = pl.Pruner(demo.model, demo.val, train_data=demo.train)
    gpu_demo = pl.demos.load(request.param)
    gpu = pl.Pruner(gpu_demo.model.cuda(), gpu_demo.val, train_data=gpu_demo.train)
    return gpu, cpu


@pytest.mark.parametrize("criterion", ["magnitude", "random", "taylor", "attribution", "wanda"])
@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_prune_and_evaluate_on_cuda(gpu_and_cpu, criterion, granularity):
    gpu, cpu = gpu_and_cpu
    original = {k: v.clone() for k, v in gpu.model.state_dict().items()}
    gpu.prune(0.6, criterion=criterion, granularity=granularity)
    for name, mask in gpu.masks().items():
        assert mask.device.type == "cuda", name
    gpu.model.eval()
    with torch.no_grad():
        full = gpu.model(gpu.val_inputs)
    torch.testing.assert_close(gpu.outputs(), full)
    m = gpu.evaluate()
    assert m.samples == len(gpu.val_targets)
    cpu.prune(0.6, criterion=criterion, granularity=granularity)
    if criterion in ("magnitude", "random"):  # identical rankings on both devices
        assert gpu.sparsity() == pytest.approx(cpu.sparsity())
        assert abs(m.accuracy - cpu.evaluate().accuracy) <= 1 / m.samples
    gpu.reset()
    for k, v in gpu.model.state_dict().items():
        assert torch.equal(v, original[k]), k


def test_two_four_and_late_layer_change_on_cuda(gpu_and_cpu):
    gpu, _ = gpu_and_cpu
    gpu.evaluate()
    gpu.prune(0.5, granularity="2:4", scope="layer")
    gpu.prune({gpu.layer_names[-1]: 0.8})
    gpu.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(gpu.outputs(), gpu.model(gpu.val_inputs))


def test_finetune_on_cuda_holds_the_masks(gpu_and_cpu):
    gpu, _ = gpu_and_cpu
    gpu.prune(0.9)
    masks = gpu.masks()
    result = gpu.finetune(1, progress=False)
    assert result.accuracy_after >= result.accuracy_before
    params = dict(gpu.model.named_parameters())
    for name, keep in masks.items():
        assert params[name].device.type == "cuda"
        assert torch.all(params[name][~keep] == 0), name


def test_exports_from_a_cuda_model(gpu_and_cpu, tmp_path, monkeypatch):
    gpu, _ = gpu_and_cpu
    gpu.prune(0.5, granularity="structured", scope="layer")
    gpu.export(tmp_path / "sparse.safetensors", format="sparse")
    state = pl.load_sparse(tmp_path / "sparse.safetensors")
    for k, v in gpu.model.state_dict().items():
        torch.testing.assert_close(state[k].to(v.device), v)
    gpu.export(tmp_path / "small", format="structured")
    small = pl.load_structured(tmp_path / "small").to("cuda")
    gpu.model.eval()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 rounds differently per shape
    with torch.no_grad():
        torch.testing.assert_close(small(gpu.val_inputs), gpu.model(gpu.val_inputs), atol=1e-4, rtol=1e-4)
