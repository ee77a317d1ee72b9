"""Every matrix weight is pruned or named: transformers' Conv1D (GPT-2), recurrent weights,
MultiheadAttention's packed in_proj_weight; Embedding listed in ``skipped``."""

import os

import pytest
import torch
from torch import nn

from prunelab import Pruner, Wanda
from prunelab.core.layers import find_layers
from tests.core_models import assert_same_state, state_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


class Logits(nn.Module):
    """A Hugging Face model returning a ModelOutput, as a module returning the last token's logits."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids):
        return self.hf(input_ids=input_ids).logits[:, -1]


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0,
                        eos_token_id=0)
    return Logits(GPT2LMHeadModel(config)).eval()


class TextRNN(nn.Module):
    """Embedding -> recurrent layer -> last step -> Linear: a text classifier in plain torch."""

    def __init__(self, cell, **kwargs):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.rnn = cell(8, 12, batch_first=True, **kwargs)
        width = (kwargs.get("proj_size") or 12) * (2 if kwargs.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3)

    def forward(self, tokens):
        return self.head(self.rnn(self.emb(tokens))[0][:, -1])


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.embed(x)
        return self.head(self.attn(h, h, h, need_weights=False)[0].mean(1))


class Conv1DMLP(nn.Module):
    """GPT-2's MLP shape: Conv1D (weights [in, out]) -> relu -> Conv1D -> relu -> Linear head."""

    def __init__(self):
        super().__init__()
        self.fc, self.proj, self.head = Conv1D(12, 8), Conv1D(8, 12), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.proj(torch.relu(self.fc(x)))))


class PositionNet(nn.Module):
    """A raw position-embedding Parameter (3 dims) that no layer owns."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 5, 4))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc((x + self.pos).mean(1))


def tokens(n=40, length=6, vocab=30):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (n, length), generator=g), torch.arange(n) % 3


ZOO = {
    "gpt2": lambda: tiny_gpt2(),
    "lstm": lambda: TextRNN(nn.LSTM),
    "gru-2-bidirectional": lambda: TextRNN(nn.GRU, num_layers=2, bidirectional=True),
    "rnn": lambda: TextRNN(nn.RNN),
    "lstm-proj": lambda: TextRNN(nn.LSTM, proj_size=6),
    "attention": lambda: SelfAttention(),
    "conv1d-mlp": lambda: Conv1DMLP(),
    "position": lambda: PositionNet(),
}


def direct_sparsity(pruner):
    """Masked weights over all prunable weights, counted from the masks one by one."""
    masked = sum(int((~pruner.mask(l.name)).sum()) for l in pruner.layers)
    return masked / sum(l.params for l in pruner.layers)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_matrix_parameter_is_a_layer_or_skipped_with_a_reason(name):
    model = ZOO[name]()
    layers, skipped = find_layers(model)
    weights = {id(l.weight) for l in layers}
    for pname, p in model.named_parameters():
        if p.dim() < 2:
            continue
        module = pname.rpartition(".")[0]
        assert id(p) in weights or pname in skipped or module in skipped, f"{pname} escaped"
    assert all(isinstance(r, str) and len(r) > 20 for r in skipped.values())


def test_gpt2_half_prunes_half_of_all_its_matrix_weights_and_says_so_truly():
    model = tiny_gpt2()
    x, _ = tokens(vocab=50)
    y = torch.arange(len(x)) % 50
    before = state_of(model)
    pruner = Pruner(model, (x, y))
    kinds = {l.kind for l in pruner.layers}
    assert "Conv1D" in kinds and len([l for l in pruner.layers if l.kind == "Conv1D"]) == 8
    assert set(pruner.skipped) == {"hf.transformer.wpe"} and "lookup table" in pruner.skipped["hf.transformer.wpe"]
    c_attn = pruner.layer("hf.transformer.h.0.attn.c_attn")
    assert c_attn.shape == (32, 96) and c_attn.units == 96 and c_attn.row_length == 32

    pruner.prune(0.5)
    assert pruner.overall_sparsity() == direct_sparsity(pruner) == 0.5
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    zero = sum(int((p == 0).sum()) for p in matrices) / sum(p.numel() for p in matrices)
    assert 0.47 < zero <= 0.5  # all but the small position table
    for l in pruner.layers:  # the masks are in the model's own parameters
        assert torch.equal(l.weight == 0, ~pruner.mask(l.name))
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model(x))  # equal to a plain loop over the model's own outputs
    total, per_layer = pruner.flops()
    assert per_layer["hf.transformer.h.0.mlp.c_fc"] == 2 * 6 * 32 * 128  # 6 tokens, [32 -> 128]

    for criterion in ("wanda", "taylor", "random"):
        pruner.prune(0.5, criterion=criterion)
        assert pruner.overall_sparsity() == direct_sparsity(pruner) == 0.5
    pruner.reset()
    assert_same_state(model, before)


def test_gpt2_2_4_runs_along_each_conv1d_column():
    model = tiny_gpt2()
    x, _ = tokens(vocab=50)
    pruner = Pruner(model, (x, torch.arange(len(x)) % 50))
    pruner.prune(0.5, granularity="2:4")
    assert pruner.blocked("2:4") == {} and pruner.overall_sparsity() == 0.5
    w = model.hf.transformer.h[0].mlp.c_proj.weight  # [128 in, 32 out]
    nonzero = (w != 0).T.reshape(w.shape[1], -1, 4).sum(-1)  # [out, in / 4]: groups along the input axis
    assert torch.equal(nonzero, torch.full_like(nonzero, 2))


def test_wanda_on_conv1d_uses_the_norm_of_each_input_feature():
    torch.manual_seed(0)
    model, x = Conv1DMLP(), torch.randn(30, 8)
    pruner = Pruner(model, (x, torch.arange(30) % 3))
    scores = pruner.scores(Wanda())
    expected = model.fc.weight.detach().abs() * x.norm(dim=0)[:, None]  # weight [in, out]: norms on rows
    assert torch.allclose(scores["fc"], expected, rtol=1e-5)
    units = pruner.scores(Wanda(), units=True)
    assert torch.allclose(units["fc"], expected.sum(0), rtol=1e-5)  # a unit is a column


def test_conv1d_structured_removes_columns_and_the_next_rows_and_exports():
    torch.manual_seed(0)
    model, x = Conv1DMLP(), torch.randn(50, 8)
    before = state_of(model)
    pruner = Pruner(model, (x, torch.arange(50) % 3))
    group = pruner.unit_groups()["fc"]
    assert {(s.param, s.dim) for s in group.slices} == {("fc.weight", 1), ("fc.bias", 0), ("proj.weight", 0)}
    pruner.prune({"fc": 0.5}, granularity="structured")
    gone = (model.fc.weight == 0).all(0)
    assert int(gone.sum()) == 6 and bool((model.fc.bias[gone] == 0).all())
    assert bool((model.proj.weight[gone] == 0).all())  # the next layer's input rows
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model(x))
    from prunelab.export.structured import exact_outputs, shrink

    shrunk = shrink(pruner)
    assert shrunk.units["fc"] == (12, 6) and shrunk.model.fc.weight.shape == (8, 6)
    assert torch.allclose(exact_outputs(shrunk.model, x), exact_outputs(model, x), atol=1e-5)
    pruner.reset()
    assert_same_state(model, before)


@pytest.mark.parametrize("name", ["lstm", "gru-2-bidirectional", "rnn", "lstm-proj"])
def test_recurrent_text_classifiers_prune_every_weight_matrix(name):
    model = ZOO[name]()
    x, y = tokens()
    before = state_of(model)
    pruner = Pruner(model, (x, y))
    recurrent = [l for l in pruner.layers if l.kind in ("LSTM", "GRU", "RNN")]
    assert recurrent and all(l.weight_name.startswith("rnn.weight_") for l in recurrent)
    assert set(pruner.skipped) == {"emb"}
    assert all("recurrent weight" in pruner.structured_blocked[l.name] for l in recurrent)

    pruner.prune(0.5)
    assert pruner.overall_sparsity() == direct_sparsity(pruner) == 0.5
    for l in recurrent:
        assert torch.equal(getattr(model.rnn, l.attr) == 0, ~pruner.mask(l.name))
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model.eval()(x))
    assert all(pruner.flops()[1][l.name] > 0 for l in recurrent)

    pruner.prune(0.5, granularity="2:4")
    fits = [l for l in recurrent if l.row_length % 4 == 0]
    assert set(pruner.blocked("2:4")) == {l.name for l in pruner.layers if l.row_length % 4}
    for l in fits:
        rows = (getattr(model.rnn, l.attr) != 0).reshape(l.units, -1, 4).sum(-1)
        assert torch.equal(rows, torch.full_like(rows, 2))
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model.eval()(x))
    pruner.prune(0.5, criterion="wanda").prune(0.5, criterion="taylor")
    pruner.reset()
    assert_same_state(model, before)


def test_wanda_on_lstm_reads_the_input_for_ih_and_the_hidden_states_for_hh():
    torch.manual_seed(0)
    model = TextRNN(nn.LSTM)
    x, y = tokens()
    pruner = Pruner(model, (x, y))
    scores = pruner.scores(Wanda())
    with torch.no_grad():
        e = model.emb(x)
        h = model.rnn(e)[0]
    ih = model.rnn.weight_ih_l0.detach().abs() * e.reshape(-1, 8).norm(dim=0)
    hh = model.rnn.weight_hh_l0.detach().abs() * h[:, :-1].reshape(-1, 12).norm(dim=0)  # the step before each
    assert torch.allclose(scores["rnn.weight_ih_l0"], ih, rtol=1e-4)
    assert torch.allclose(scores["rnn.weight_hh_l0"], hh, rtol=1e-4)


def test_multihead_attention_in_proj_is_a_layer():
    torch.manual_seed(0)
    model, x = SelfAttention(), torch.randn(30, 5, 4)
    before = state_of(model)
    pruner = Pruner(model, (x, torch.arange(30) % 3))
    layer = pruner.layer("attn.in_proj_weight")
    assert layer.shape == (24, 8) and layer.weight is model.attn.in_proj_weight
    assert "attention heads" in pruner.structured_blocked["attn.in_proj_weight"]
    pruner.prune(0.5)
    assert pruner.overall_sparsity() == direct_sparsity(pruner) == 0.5
    assert torch.equal(model.attn.in_proj_weight == 0, ~pruner.mask("attn.in_proj_weight"))
    with torch.no_grad():
        assert torch.equal(pruner.outputs(), model.eval()(x))
    scores = pruner.scores(Wanda())  # query, key and value are all h: one norm per feature, three blocks
    with torch.no_grad(), pruner.dense():  # scores are taken on the dense model
        norm = model.embed(x).reshape(-1, 8).norm(dim=0)
        expected = model.attn.in_proj_weight.abs() * norm
    assert torch.allclose(scores["attn.in_proj_weight"], expected, rtol=1e-4)
    pruner.prune(0.5, granularity="2:4")
    rows = (model.attn.in_proj_weight != 0).reshape(24, 2, 4).sum(-1)
    assert torch.equal(rows, torch.full_like(rows, 2))
    pruner.reset()
    assert_same_state(model, before)


def test_a_lone_matrix_parameter_is_listed_by_its_name():
    _, skipped = find_layers(PositionNet())
    assert list(skipped) == ["pos"] and "shaped 1x5x4" in skipped["pos"]
