"""Hugging Face models as they are: keyword inputs, ModelOutputs, dict batches, label_key, output=.

Every model is built from a tiny config with random weights (nothing downloads)."""

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunelab import Pruner
from prunelab.core.inputs import Inputs, forward, select_output
from tests.core_models import assert_same_state, state_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def bert(labels=3):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=labels)
    return transformers.BertForSequenceClassification(cfg).eval()


def vit():
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=4)
    return transformers.ViTForImageClassification(cfg).eval()


def text_batch(n=24, tokens=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (n, tokens), generator=g)
    mask = torch.ones(n, tokens, dtype=torch.long)
    mask[::2, 5:] = 0  # padded rows: the mask must reach the model
    return {"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (n,), generator=g)


def plain_outputs(model, x, output=lambda o: o.logits, bs=1000):
    """The model's own outputs by a loop of our own, in eval mode."""
    with torch.no_grad():
        return torch.cat([output(model(**{k: v[i:i + bs] for k, v in x.items()})) for i in range(0, len(x["input_ids"]
                          if "input_ids" in x else x["pixel_values"]), bs)])


class DictData(Dataset):
    def __init__(self, x, y, key="labels"):
        self.x, self.y, self.key = x, y, key

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.x.items()}, self.key: self.y[i]}


# ---------------------------------------------------------------------- Inputs and forward

def test_inputs_slice_split_and_join_every_tensor_together():
    x = Inputs({"input_ids": torch.arange(10).view(5, 2), "attention_mask": torch.ones(5, 2)})
    assert len(x) == 5 and len(x[:3]) == 3 and x[torch.tensor([4, 0])]["input_ids"].tolist() == [[8, 9], [0, 1]]
    assert x[1]["input_ids"].tolist() == [2, 3]  # one sample, as a Dataset item
    parts = x.split(2)
    assert [len(p) for p in parts] == [2, 2, 1]
    joined = Inputs.cat(parts)
    assert torch.equal(joined["input_ids"], x["input_ids"]) and joined.nbytes == x.nbytes
    assert x.to(torch.float64)["input_ids"].dtype == torch.int64  # token ids stay integers
    with pytest.raises(ValueError, match="share their first"):
        Inputs({"a": torch.zeros(3), "b": torch.zeros(4)})
    with pytest.raises(ValueError, match="pad every sequence to one length"):
        Inputs.cat([Inputs({"a": torch.zeros(2, 3)}), Inputs({"a": torch.zeros(2, 4)})])


def test_the_output_selector():
    out = transformers.modeling_outputs.SequenceClassifierOutput(logits=torch.ones(2, 3), hidden_states=None)
    assert torch.equal(select_output(out), torch.ones(2, 3))
    assert torch.equal(select_output((torch.zeros(2), torch.ones(2))), torch.zeros(2))
    assert torch.equal(select_output({"logits": torch.ones(1), "score": torch.zeros(1)}, "score"), torch.zeros(1))
    assert torch.equal(select_output({"a": torch.ones(1)}, lambda o: o["a"] * 2), torch.full((1,), 2.0))
    with pytest.raises(TypeError, match=r"a dict with keys start, end.*output="):
        select_output({"start": torch.ones(1), "end": torch.ones(1)})
    with pytest.raises(TypeError, match=r"output='nope'.*its keys: logits"):
        select_output({"logits": torch.ones(1)}, "nope")


def test_forward_passes_every_key_as_a_keyword():
    model = bert()
    x, _ = text_batch()
    got = forward(model, Inputs(x))
    assert torch.equal(got, plain_outputs(model, x))
    assert not torch.equal(got, plain_outputs(model, {"input_ids": x["input_ids"]}))  # the mask matters


# ---------------------------------------------------------------------- the Pruner on HF models

@pytest.mark.parametrize("build", [bert, vit], ids=["bert", "vit"])
def test_prune_evaluate_reset_bit_for_bit(build):
    model = build()
    if build is bert:
        x, y = text_batch()
    else:
        g = torch.Generator().manual_seed(2)
        x, y = {"pixel_values": torch.randn(24, 3, 8, 8, generator=g)}, torch.randint(0, 4, (24,), generator=g)
    before = state_of(model)
    pruner = Pruner(model, (x, y))
    dense = pruner.evaluate()
    expected = (plain_outputs(model, x).argmax(1) == y).float().mean().item()
    assert dense.accuracy == pytest.approx(expected, abs=1e-6)
    pruner.prune(0.6)
    assert pruner.overall_sparsity() == pytest.approx(0.6, abs=0.01)
    pruned = pruner.evaluate()
    # the measured outputs equal a plain loop over the model's own outputs, masked in place
    assert torch.allclose(pruner.outputs(), plain_outputs(model, x), atol=1e-6)
    assert pruned.accuracy == pytest.approx((plain_outputs(model, x).argmax(1) == y).float().mean().item(), abs=1e-6)
    for criterion in ("taylor", "wanda", "attribution"):
        pruner.prune(0.5, criterion=criterion)
        assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)
    pruner.reset()
    assert_same_state(model, before)
    assert pruner.evaluate().accuracy == dense.accuracy


def test_the_fast_path_falls_back_with_identical_results_and_tensor_models_keep_it():
    model = bert()
    x, y = text_batch()
    pruner = Pruner(model, (x, y))
    assert not pruner.incremental  # keyword inputs: the plain forward
    for amount in (0.3, 0.7, 0.0):
        pruner.prune(amount)
        assert torch.equal(pruner.outputs(), plain_outputs(model, x))  # bit for bit
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    tensor_pruner = Pruner(mlp, (torch.randn(16, 4), torch.randint(0, 3, (16,))))
    assert tensor_pruner.incremental


def test_a_dict_dataloader_and_a_dict_dataset():
    x, y = text_batch()
    reference = Pruner(bert(), (x, y)).evaluate()
    for data in (DataLoader(DictData(x, y), batch_size=5), DictData(x, y)):
        model = bert()
        p = Pruner(model, data, train_data=data)
        assert p.evaluate().accuracy == reference.accuracy
        assert torch.equal(p.val_inputs["attention_mask"], x["attention_mask"])
        before = state_of(model)
        p.prune(0.4, criterion="taylor")
        assert p.overall_sparsity() == pytest.approx(0.4, abs=0.01)
        p.reset()
        assert_same_state(model, before)


def test_label_key_and_a_missing_label_key():
    model = bert()
    x, y = text_batch()
    data = DataLoader(DictData(x, y, key="label"), batch_size=8)
    with pytest.raises(ValueError, match=r"keys \['attention_mask', 'input_ids', 'label'\] but no labels under "
                                         r"'labels'.*label_key="):
        Pruner(model, data)
    p = Pruner(model, data, label_key="label")
    assert torch.equal(p.val_targets, y)


def test_lengths_that_differ_are_refused():
    model = bert()
    x, y = text_batch()
    with pytest.raises(ValueError, match="24 inputs but 23 targets"):
        Pruner(model, (x, y[:-1]))
    with pytest.raises(ValueError, match="share their first"):
        Pruner(model, ({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:5]}, y))


def test_output_selects_another_tensor_or_fails_clearly():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, x):
            h = self.body(x).relu()
            return {"first": self.a(h), "second": self.b(h)}

    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    model = TwoHeads().eval()
    with pytest.raises(TypeError, match=r"a dict with keys first, second.*output="):
        Pruner(model, (x, y))
    p = Pruner(model, (x, y), output="second")
    with torch.no_grad():
        assert torch.equal(p.outputs(), model(x)["second"])
        assert torch.equal(p.forward(x[:3]), model(x[:3])["second"])
    p.close()
    q = Pruner(model, (x, y), output=lambda out: out["first"])
    with torch.no_grad():
        assert torch.equal(q.outputs(), model(x)["first"])
    q.close()
    with pytest.raises(TypeError, match="output= takes"):
        Pruner(model, (x, y), output=3)


def test_a_tuple_returning_tensor_model_keeps_its_traced_path():
    class Tupled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

        def forward(self, x):
            out = self.b(self.a(x).relu())
            return out, out.sum()

    model = Tupled().eval()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    p = Pruner(model, (x, y))
    assert p.incremental
    p.prune({"b": 0.5})
    with torch.no_grad():
        assert torch.allclose(p.outputs(), model(x)[0], atol=1e-6)
