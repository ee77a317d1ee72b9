"""Structured pruning of attention removes whole heads (core/heads.py): Hugging Face ViT, BERT and
a Llama-style model with grouped-query attention, built from tiny configs (nothing downloads)."""

import copy

import pytest
import torch
from torch import nn

import prunelab as pl
from prunelab.core.heads import cut_heads
from prunelab.core.plan import Plan

transformers = pytest.importorskip("transformers")


class Logits(nn.Module):
    """A Hugging Face model returning its ``.logits`` (until ModelOutput support lands)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x).logits


def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=32, num_labels=3)
    return Logits(transformers.ViTForImageClassification(config)).eval(), torch.randn(24, 1, 8, 8)


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return Logits(transformers.BertForSequenceClassification(config)).eval(), torch.randint(0, 50, (24, 6))


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=16)

    class Last(Logits):  # next-token logits of the last position: a classifier over the vocabulary
        def forward(self, x):
            return self.m(x).logits[:, -1]

    return Last(transformers.LlamaForCausalLM(config)).eval(), torch.randint(0, 50, (24, 6))


MODELS = {"vit": (vit, "m.vit.layers.{}.attention.", ("q_proj", "k_proj", "v_proj"), 4),
          "bert": (bert, "m.bert.encoder.layer.{}.attention.self.", ("query", "key", "value"), 4),
          "llama": (llama, "m.model.layers.{}.self_attn.", ("q_proj", "k_proj", "v_proj"), 2)}


def make(name):
    build, prefix, qkv, units = MODELS[name]
    model, x = build()
    pruner = pl.Pruner(model, (x, torch.randint(0, 3 if name != "llama" else 50, (len(x),))))
    return pruner, x, [prefix.format(0) + n for n in qkv], units


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_unit_of_an_attention_layer_is_a_head(name):
    pruner, _, (q, k, v), units = make(name)
    group = pruner.unit_groups()[q]
    assert group.layers == (q, k, v) and group.units == units
    assert group is pruner.unit_groups()[k] is pruner.unit_groups()[v]
    att = group.heads
    assert att.units == units and att.heads * att.head_dim == pruner.layer(q).units
    # every q/k/v row and the output projection's input columns belong to exactly one unit
    cols = [s for s in group.slices if s.param == f"{att.o}.weight"]
    assert len(cols) == 1 and cols[0].dim == 1 and len(cols[0].index) == pruner.layer(q).units


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_structured_amount_removes_whole_heads(name):
    pruner, _, (q, k, v), units = make(name)
    att = pruner.unit_groups()[q].heads
    pruner.prune({q: 0.3}, granularity="structured")  # rounds to whole heads (or key/value groups)
    removed = round(0.3 * units)
    assert int((~pruner.plans[q].keep).sum()) == removed
    rows = pruner.mask(q).all(1).reshape(units, -1)
    assert (rows.all(1) | ~rows.any(1)).all()  # each head all kept or all removed
    assert int((~rows.any(1)).sum()) == removed
    for layer in (k, v):
        kept = pruner.mask(layer).any(1).reshape(units, -1)
        assert torch.equal(kept.all(1), pruner.plans[q].keep)
    cols = pruner.mask(att.o).any(0).reshape(units, -1)
    assert torch.equal(cols.all(1), pruner.plans[q].keep)
    assert pruner.plans[k].keep is pruner.plans[q].keep or torch.equal(pruner.plans[k].keep, pruner.plans[q].keep)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removing_heads_by_masks_equals_cutting_them_out(name):
    pruner, x, (q, _, _), units = make(name)
    keep = torch.ones(units, dtype=torch.bool)
    keep[1] = False
    pruner.set_plans({q: Plan("structured", "magnitude", 1 / units, None, keep)})
    masked = pruner.outputs()
    small = copy.deepcopy(pruner.model)
    att = pruner.unit_groups()[q].heads
    cut_heads(small, att, keep)
    assert small.get_submodule(q).weight.shape[0] == (units - 1) * att.heads // units * att.head_dim
    with torch.no_grad():
        got = small(x)
    assert (got - masked).abs().max() <= 1e-5 * max(1.0, float(masked.abs().max()))


def test_a_mask_of_features_is_refused_at_prune_time_with_the_head_layout():
    pruner, _, (q, _, _), _ = make("bert")
    features = torch.ones(16, dtype=torch.bool)
    features[:3] = False  # three features of a 4-wide head: not a whole head
    with pytest.raises(ValueError, match=r"shaped \(4,\) \(one per attention head: .*4 heads of 4"):
        pruner.set_plans({q: Plan("structured", "magnitude", 3 / 16, None, features)})
    assert pruner.plans == {}


def test_grouped_query_attention_removes_a_key_value_group_with_its_query_heads():
    pruner, _, (q, k, v), _ = make("llama")
    att = pruner.unit_groups()[q].heads
    assert (att.heads, att.kv_heads, att.head_dim) == (8, 2, 4)
    pruner.prune({q: 0.5}, granularity="structured")
    assert int(pruner.mask(q).any(1).sum()) == 16  # 4 of 8 query heads of 4 rows stay
    assert int(pruner.mask(k).any(1).sum()) == 4 == int(pruner.mask(v).any(1).sum())  # 1 of 2 kv heads


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_residual_layers_say_what_they_are_coupled_to(name):
    pruner, *_ = make(name)
    reasons = pruner.structured_blocked
    out = {"bert": "m.bert.encoder.layer.0.output.dense", "llama": "m.model.layers.0.mlp.down_proj"}[name]
    assert "feeds a Embedding" not in reasons[out]
    expected = {"bert": "normalised together by LayerNorm 'm.bert.encoder.layer.0.attention.output.LayerNorm'",
                "llama": "added (a residual connection) to those of Embedding 'm.model.embed_tokens'"}[name]
    assert expected in reasons[out]


def test_global_structured_pruning_counts_heads_as_units():
    pruner, _, (q, _, _), _ = make("vit")
    pruner.prune(0.5, granularity="structured")
    groups = pruner.unit_groups()
    total = sum(g.units for g in {id(g): g for g in groups.values()}.values())
    removed = sum(int((~pruner.plans[g.layers[0]].keep).sum()) for g in {id(g): g for g in groups.values()}.values()
                  if g.layers[0] in pruner.plans)
    assert removed == round(0.5 * total)
    assert pruner.unit_sparsity() == removed / total
