"""A reason shared by many layers is said once, with the count and a few names."""

import pytest
import torch
from torch import nn

from prunelab import Pruner
from prunelab.core.reasons import grouped, summarize


def test_a_shared_reason_is_said_once_with_its_count_and_three_names():
    reasons = {f"features.{i}.conv": "it feeds a grouped convolution" for i in range(57)}
    reasons["classifier"] = "its outputs are the model's outputs"
    line = summarize(reasons)
    assert line == ("57 layers: it feeds a grouped convolution (features.0.conv, features.1.conv, "
                    "features.2.conv and 54 more); classifier: its outputs are the model's outputs")
    assert line.count("grouped convolution") == 1


def test_grouped_orders_reasons_by_how_many_share_them():
    assert grouped({"a": "x", "b": "y", "c": "y"}) == [("y", ["b", "c"]), ("x", ["a"])]
    assert summarize({}) == ""
    assert summarize({"": "r"}) == "(the model): r"  # the root module has the empty name


class Wide(nn.Module):
    """40 layers of row length 6 (2:4 cannot take them) and one of 8."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(6, 6) for _ in range(40))
        self.head = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.out(self.head(x))


def test_2_4_lists_the_layers_it_cannot_do_with_their_row_length_once():
    torch.manual_seed(0)
    pruner = Pruner(Wide(), (torch.randn(30, 6), torch.arange(30) % 3))
    with pytest.warns(UserWarning) as caught:
        pruner.prune(0.5, granularity="2:4")
    message = str(caught[0].message)
    assert "41 of 42 layers dense" in message
    assert "41 layers: its rows are 6 weights long, not a multiple of 4 (blocks.0, blocks.1, blocks.2 and 38 more)" \
        in message
    assert len(message) < 400
    blocked = pruner.blocked("2:4")
    assert set(blocked) == {f"blocks.{i}" for i in range(40)} | {"head"}
    assert pruner.sparsity()["out"] == 0.5 and pruner.sparsity()["head"] == 0.0
    with pytest.raises(ValueError, match=r"2:4 cannot prune 2 layers: its rows are 6 weights long"):
        pruner.prune({"blocks.0": 0.5, "blocks.1": 0.5, "out": 0.5}, granularity="2:4")
    assert pruner.blocked("unstructured") == {}


class DeepLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 8, num_layers=3, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def test_no_structured_layer_says_each_reason_once():
    torch.manual_seed(0)
    pruner = Pruner(DeepLSTM(), (torch.randn(20, 5, 4), torch.arange(20) % 3))
    with pytest.raises(ValueError) as e:
        pruner.prune(0.5, granularity="structured")
    text = str(e.value)
    assert "6 layers: a recurrent weight (LSTM)" in text and text.count("recurrent weight") == 1
    assert "and 3 more" in text and "head: its outputs are the model's outputs" in text
