"""pl.explore takes a Hugging Face model as it is: keyword inputs, a ModelOutput, dict batches
(the widget is built and settled here; no browser)."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import prunelab as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")


def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).eval()


class Reviews(Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 60, (n, 8), generator=g)
        self.mask = torch.ones(n, 8, dtype=torch.long)
        self.mask[::2, 5:] = 0
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "sentiment": self.y[i]}


def test_explore_builds_on_a_bert_classifier_with_dict_batches():
    data = DataLoader(Reviews(), batch_size=8)
    model = bert()
    ex = pl.explore(model, data, label_key="sentiment")
    try:
        ex.wait()
        assert ex.pruner.label_key == "sentiment" and not ex.pruner.incremental
        assert ex.state.metrics.accuracy == ex.pruner.evaluate().accuracy
        ex.controls.global_slider.value = 0.5
        ex.wait()
        assert ex.pruner.overall_sparsity() == pytest.approx(0.5, abs=0.01)
        assert ex.state.metrics.nonzero_params < ex.state.metrics.params
        # input attributions cannot interpolate token ids: a short message in the view, the rest works
        ex.explain()
        ex.wait()
        assert "token ids" in ex.state.explain_error
        ex.pruner.reset()
        ex.wait()
        assert ex.state.metrics.nonzero_params == ex.state.metrics.params
    finally:
        ex.close()


def test_explore_passes_the_output_selector():
    model = bert()
    data = DataLoader(Reviews(), batch_size=8)
    with pytest.raises(TypeError, match="output"):
        pl.explore(model, data, label_key="sentiment", output="nope")
