"""Structured pruning of attention removes whole heads: a head's q, k and v features together
with the output projection's matching input columns; grouped-query attention whole key/value
groups with the query heads that read them. GPT-2 and Llama may refuse instead, at ``prune()``
and with a reason; ViT and BERT must prune heads (their structured export must work)."""

import pytest

from .known import cases
from .models import ZOO
from .support import assert_measures_like_own_loop, assert_whole_heads, pruner_for

pytestmark = pytest.mark.usefixtures("one_thread")

MUST_PRUNE_HEADS = ("vit", "bert")  # issue 11: "Structured export of HF ViT and BERT works"


@pytest.mark.parametrize("name", cases("heads", only=lambda e: e.attention is not None))
def test_structured_attention_removes_whole_heads(name):
    entry = ZOO[name]
    model, data, pruner = pruner_for(entry)
    blocks = entry.heads()
    by_weight = {l.weight_name: l.name for l in pruner.layers}
    attention = {by_weight[p] for b in blocks for p in (b.q[0], b.k[0], b.v[0]) if p in by_weight}
    blocked = {n: r for n, r in pruner.structured_blocked.items() if n in attention}
    if blocked and not name.startswith(MUST_PRUNE_HEADS):
        assert all(isinstance(r, str) and r for r in blocked.values())
        return
    assert not blocked, f"attention blocked: {blocked}"
    pruner.prune(0.5, granularity="structured", scope="layer")
    removed = assert_whole_heads(model, blocks, pruner.masks())
    assert removed > 0, "no head was removed"
    assert_measures_like_own_loop(entry, pruner, data)
