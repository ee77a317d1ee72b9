"""Structured (and ONNX) export of Hugging Face ViT and BERT with attention heads removed: the
shrunk network equals the masked model to 1e-5, loads back with its class or without it, and the
loaded module behaves like any nn.Module (eval, train, to)."""

import pytest
import torch
from torch import nn

import prunelab as pl

transformers = pytest.importorskip("transformers")


class Logits(nn.Module):
    """A Hugging Face model returning its ``.logits`` (until ModelOutput support lands)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x).logits


def build(name):
    torch.manual_seed(0)
    if name == "vit":
        config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, num_labels=3)
        return Logits(transformers.ViTForImageClassification(config)).eval()
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return Logits(transformers.BertForSequenceClassification(config)).eval()


QKV = {"vit": "m.vit.layers.{}.attention.q_proj", "bert": "m.bert.encoder.layer.{}.attention.self.query"}
ATTENTION = {"vit": "m.vit.layers.{}.attention", "bert": "m.bert.encoder.layer.{}.attention.self"}


def inputs(name):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 1, 8, 8, generator=gen) if name == "vit" else torch.randint(0, 50, (32, 6), generator=gen)


@pytest.fixture(scope="module", params=["vit", "bert"])
def exported(request, tmp_path_factory):
    """(name, pruner, x, Exported, path): heads 2 of 4 removed in layer 0, 1 of 4 in layer 1, and
    a third of the MLP units; exported "structured" once for the module."""
    name = request.param
    x = inputs(name)
    pruner = pl.Pruner(build(name), (x, torch.randint(0, 3, (len(x),))))
    q0, q1 = QKV[name].format(0), QKV[name].format(1)
    pruner.prune({q0: 0.5, q1: 0.25}, granularity="structured")
    mlp = [n for n, g in pruner.unit_groups().items() if g.heads is None]
    pruner.prune(dict.fromkeys(mlp, 1 / 3), granularity="structured")
    path = tmp_path_factory.mktemp(name) / "small"
    return name, pruner, x, pruner.export(path, "structured"), path


def test_heads_are_removed_and_the_outputs_stay(exported):
    name, pruner, x, result, _ = exported
    q0, q1 = QKV[name].format(0), QKV[name].format(1)
    assert result.details["units"][q0] == (16, 8) and result.details["units"][q1] == (16, 12)
    assert result.details["max_abs_diff"] <= 1e-5


def test_the_class_loads_it_with_fewer_heads_and_the_same_outputs(exported):
    name, pruner, x, _, path = exported
    small = pl.load_structured(path, build(name))
    att = small.get_submodule(ATTENTION[name].format(0))
    assert att.num_attention_heads == 2
    if name == "bert":
        assert att.all_head_size == 8
    assert small.get_submodule(QKV[name].format(0)).weight.shape == (8, 16)
    with torch.no_grad():
        got = small(x)
    reference = pruner.outputs()
    assert (got - reference).abs().max() <= 1e-5 * max(1.0, float(reference.abs().max()))


def test_the_program_loads_as_a_module_people_know(exported):
    name, pruner, x, _, path = exported
    small = pl.load_structured(f"{path}.pt2")
    assert small.eval() is small and not small.training
    with pytest.warns(UserWarning, match="computes as in eval mode"):
        assert small.train() is small
    assert small.training
    small.eval()
    moved = small.to(torch.float32)
    assert isinstance(moved, nn.Module)
    with torch.no_grad():
        got = moved(x)
    reference = pruner.outputs()
    assert (got - reference).abs().max() <= 1e-5 * max(1.0, float(reference.abs().max()))


def test_onnx_export_carries_the_heads_removed(exported, tmp_path):
    pytest.importorskip("onnxruntime")
    name, pruner, *_ = exported
    result = pruner.export(tmp_path / "small.onnx", "onnx")
    assert result.details["network"].startswith("structured")
    assert result.details["max_abs_diff"] <= 1e-4
