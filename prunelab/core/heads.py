"""Attention heads: finding them, the parameter slices of each, and cutting them out.

Structured pruning of attention removes whole heads. A head is ``head_dim`` consecutive output
rows of the query, key and value projections (with their bias entries) and the matching input
columns of the output projection: the attention's forward splits those rows into heads
(``view(..., -1, head_dim)``), so a partial head cannot be removed, and a removed whole head
is exact (its zeroed value rows and output columns contribute nothing). With grouped-query
attention (fewer key/value heads than query heads) the unit is one key/value group: its key and
value head together with the query heads that read it.

Found by module structure and attributes, as Hugging Face transformers and most code writes
attention: a module with ``q_proj``/``k_proj``/``v_proj`` and ``o_proj`` (or ``out_proj``)
Linear children (Llama, Mistral, Qwen, ViT, OPT...), or with ``query``/``key``/``value`` and its
parent's ``output.dense`` (BERT, RoBERTa, DeiT...); the head size from ``head_dim`` /
``attention_head_size`` or from the head count (``num_attention_heads`` / ``num_heads``).
``nn.MultiheadAttention`` packs its projections in one tensor and stays out (see layers.py).

:func:`find_attention` lists them, :func:`head_slices` gives the slices one unit group holds,
:func:`cut_heads` removes heads from a model (the structured export's surgery for attention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PATTERNS = (  # (query, key, value, output projection relative to the module, or to its parent)
    ("q_proj", "k_proj", "v_proj", ("o_proj", "out_proj")),
    ("query", "key", "value", ("^output.dense",)),
)
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size")
HEADS_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_HEADS_ATTRS = ("num_key_value_heads", "num_kv_heads")
WIDTH_ATTRS = ("all_head_size", "inner_dim", "embed_dim_per_partition")


@dataclass(frozen=True)
class Attention:
    """One attention module's projections (qualified module names) and head layout.

    ``units`` is what structured pruning removes one of at a time: a head, or with grouped-query
    attention (``kv_heads < heads``) a key/value group with its ``heads // kv_heads`` query heads.

    Example:
        >>> att = find_attention(model, layers)[0][0]  # doctest: +SKIP
        >>> att.units, att.head_dim
        (4, 16)
    """

    name: str
    q: str
    k: str
    v: str
    o: str
    head_dim: int
    heads: int
    kv_heads: int

    @property
    def units(self) -> int:
        return self.kv_heads

    @property
    def layers(self) -> tuple[str, str, str]:
        return (self.q, self.k, self.v)

    def describe(self) -> str:
        group = f", {self.heads // self.kv_heads} query heads per key/value group" if self.kv_heads < self.heads else ""
        return f"{self.name}: {self.heads} heads of {self.head_dim}{group}"


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _int_attr(module: nn.Module, names) -> int | None:
    for n in names:
        v = getattr(module, n, None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def find_attention(model: nn.Module, layer_names) -> tuple[list[Attention], dict[str, str]]:
    """The attention modules of ``model`` whose projections are all prunable layers, and
    ``{layer name: reason}`` for projections of one that cannot be cut by heads.

    Args:
        model: the model.
        layer_names: names of its prunable layers (the projections must be among them).

    Returns:
        ``(attentions, blocked)``.

    Example:
        >>> atts, blocked = find_attention(bert, [l.name for l in find_layers(bert)[0]])  # doctest: +SKIP
        >>> atts[0].o
        'bert.encoder.layer.0.attention.output.dense'
    """
    names = set(layer_names)
    found, blocked = [], {}
    for name, module in model.named_modules():
        for qn, kn, vn, outs in PATTERNS:
            q, k, v = (_join(name, n) for n in (qn, kn, vn))
            if not {q, k, v} <= names:
                continue
            parent = name.rpartition(".")[0] if "." in name else ""
            candidates = [_join(parent, x[1:]) if x.startswith("^") else _join(name, x) for x in outs]
            o = next((c for c in candidates if c in names), None)
            mods = [model.get_submodule(n) for n in (q, k, v)]
            if o is None or not all(isinstance(m, nn.Linear) for m in mods + [model.get_submodule(o)]):
                continue
            reason, att = _layout(name, module, q, k, v, o, *mods, model.get_submodule(o))
            if reason:
                for n in (q, k, v):
                    blocked[n] = f"it is a projection of attention {name!r}, whose heads prunelab cannot tell: {reason}"
            else:
                found.append(att)
            break
    return found, blocked


def _layout(name, module, q, k, v, o, mq, mk, mv, mo) -> tuple[str | None, Attention | None]:
    d = _int_attr(module, HEAD_DIM_ATTRS)
    h = _int_attr(module, HEADS_ATTRS)
    if d is None and h is not None and mq.out_features % h == 0:
        d = mq.out_features // h
    if d is None:
        return (f"it has none of the attributes {HEAD_DIM_ATTRS + HEADS_ATTRS} that give the head size", None)
    if mq.out_features % d or mk.out_features % d or mk.out_features != mv.out_features:
        return (f"its query ({mq.out_features}), key ({mk.out_features}) and value ({mv.out_features}) outputs "
                f"are not whole heads of {d}", None)
    heads, kv = mq.out_features // d, mk.out_features // d
    if heads % kv or mo.in_features != mq.out_features:
        return (f"{heads} query heads do not share {kv} key/value heads evenly, or its output projection takes "
                f"{mo.in_features} inputs, not {mq.out_features}", None)
    return None, Attention(name, q, k, v, o, d, heads, kv)


def head_slices(att: Attention, param_names, device) -> list[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """``(parameter, dim, index, unit)`` for every entry that belongs to a unit of ``att``: the
    query, key and value rows and bias entries, and the output projection's input columns.

    Args:
        att: the attention.
        param_names: the qualified names of the model's parameters (a set or a dict).
        device: where the index tensors live.

    Returns:
        A list of tuples, as :class:`~prunelab.core.units.Slice` takes them.

    Example:
        >>> head_slices(att, dict(model.named_parameters()), "cpu")[0][0]  # doctest: +SKIP
        'encoder.0.q_proj.weight'
    """
    out = []
    q_rows = att.heads * att.head_dim
    kv_rows = att.kv_heads * att.head_dim
    per_q = q_rows // att.units
    per_kv = kv_rows // att.units
    for layer, rows, per in ((att.q, q_rows, per_q), (att.k, kv_rows, per_kv), (att.v, kv_rows, per_kv)):
        idx = torch.arange(rows, device=device)
        for p in ("weight", "bias"):
            if f"{layer}.{p}" in param_names:
                out.append((f"{layer}.{p}", 0, idx, idx // per))
    idx = torch.arange(q_rows, device=device)
    out.append((f"{att.o}.weight", 1, idx, idx // per_q))
    return out


@torch.no_grad()
def cut_heads(model: nn.Module, att: Attention, keep: torch.Tensor) -> None:
    """Remove from ``model`` (in place) the units of ``att`` not in ``keep``: the projections
    shrink, and the attention module's head counts (``num_attention_heads``, ``all_head_size``,
    ``num_key_value_heads``... whichever it has) follow.

    Args:
        model: the model (a copy: the structured export never cuts the user's model).
        att: the attention, as :func:`find_attention` found it in a model of the same structure.
        keep: bool vector over ``att.units``, True = kept (at least one).

    Returns:
        None.

    Example:
        >>> cut_heads(copy_of_model, att, torch.tensor([True, False, True, True]))  # doctest: +SKIP
    """
    keep = keep.cpu().bool()
    if not keep.any():
        raise ValueError(f"attention {att.name!r} needs at least one head; the cut would remove all {att.units}.")
    kept = int(keep.sum())
    per_q, per_kv = att.heads // att.units * att.head_dim, att.head_dim
    for layer, per in ((att.q, per_q), (att.k, per_kv), (att.v, per_kv)):
        m = model.get_submodule(layer)
        rows = keep.repeat_interleave(per).nonzero().flatten().to(m.weight.device)
        m.weight = nn.Parameter(m.weight.index_select(0, rows).clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.index_select(0, rows).clone(), requires_grad=m.bias.requires_grad)
        m.out_features = len(rows)
    o = model.get_submodule(att.o)
    cols = keep.repeat_interleave(per_q).nonzero().flatten().to(o.weight.device)
    o.weight = nn.Parameter(o.weight.index_select(1, cols).clone(), requires_grad=o.weight.requires_grad)
    o.in_features = len(cols)
    module = model.get_submodule(att.name)
    new_heads, new_kv = kept * att.heads // att.units, kept
    for names, old, new in ((HEADS_ATTRS, att.heads, new_heads), (KV_HEADS_ATTRS, att.kv_heads, new_kv),
                            (WIDTH_ATTRS, att.heads * att.head_dim, new_heads * att.head_dim)):
        for n in names:
            if getattr(module, n, None) == old and not isinstance(getattr(module, n), bool):
                setattr(module, n, new)
