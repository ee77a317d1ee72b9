"""Which zoo cases fail today, and for which point of issue 11 (notes/issue11.md).

Each is marked ``xfail(strict=True)``: a case that starts passing fails as XPASS, so the branch
that fixes a point shows exactly which cases it turned green, and the lead removes those marks at
the merge. A case failing for any other reason is a bug, not an entry here.

The points, by the branch that builds them:
- HF: Hugging Face models as they are (a ModelOutput; dict batches; keys reaching the model).
- LM: language models (next-token accuracy, perplexity equal to the model's own loss).
- CONV1D, RNN, EMBED: every matrix weight pruned or named (transformers' Conv1D; nn.LSTM/GRU
  weights as prunable layers; embedding tables, ViT's position embeddings, named in skipped).
- HEADS: whole attention heads (structured q/k/v/o together; structured export of attention).
- TOPOLOGY: any model that prunes can be explored (split, chunk, concat, grouped convolutions).
"""

from __future__ import annotations

import pytest

from .models import ZOO

HF = "issue 11: hf (ModelOutput, dict batches)"
LM = "issue 11: language models (next-token accuracy, perplexity)"
CONV1D = "issue 11: layers (transformers' Conv1D found)"
RNN = "issue 11: layers (LSTM/GRU weights pruned)"
EMBED = "issue 11: layers (every matrix weight named: position embeddings)"
HEADS = "issue 11: heads (whole attention heads, structured export of attention)"
TOPOLOGY = "issue 11: topology (split, concat, depthwise)"

CHECKS = ("found", "unstructured", "structured", "2:4", "reset", "export", "explore", "heads")

# (model, check) -> the points it waits for (all of them, joined: the case turns green when the last lands)
KNOWN: dict[tuple[str, str], tuple[str, ...]] = {}


def _as_they_come(name: str, *checks: str, points=(HF,)):
    for check in checks or CHECKS:
        KNOWN[(name, check)] = KNOWN.get((name, check), ()) + tuple(points)


for _e in ZOO.values():
    if _e.hf:  # every Hugging Face model is refused today (point 1), whatever else it needs
        _as_they_come(_e.name)


def cases(check: str, only=None) -> list:
    """The zoo's models for ``check`` as pytest params, each known failure marked strict xfail
    with the points it waits for; ``only(entry)`` filters the models."""
    out = []
    for name, entry in ZOO.items():
        if only is not None and not only(entry):
            continue
        points = KNOWN.get((name, check))
        marks = [pytest.mark.xfail(strict=True, reason=" + ".join(dict.fromkeys(points)))] if points else []
        out.append(pytest.param(name, id=name, marks=marks))
    return out
