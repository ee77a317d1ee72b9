"""Importance criteria: how much each weight, and each output unit, matters.

A criterion is a callable object (as in Torch-Pruning): given a :class:`ScoringContext` it returns
``{layer name: scores}`` shaped like each layer's weight; higher means more important, and the
lowest-scored weights are pruned first. Unit scores for structured pruning default to the sum of
a unit's weight scores (its row, or its filter: :meth:`~prunelab.core.layers.Layer.rows`, so a
transformers Conv1D, stored ``[in, out]``, sums its columns).

Scores are always taken on the dense model (the Pruner loads the unmasked weights while scoring),
so one ordering serves every sparsity and a slider can move both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .inputs import Inputs, call, forward, select_output
from .features import input_sq
from .layers import Layer
from .modes import untouched
from .tracing import TRACING


@dataclass
class ScoringContext:
    """What a criterion may use. ``batches`` yields ``(inputs, targets)`` on the model's device
    (inputs a tensor, or :class:`~prunelab.core.inputs.Inputs` for keyword inputs); call the model
    as ``ctx.forward(x)``, which applies the Pruner's ``output`` selector."""

    model: nn.Module
    layers: list[Layer]
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    classification: bool
    seed: int = 0
    output: object = None

    def forward(self, x) -> torch.Tensor:
        """The model's measured output on ``x`` (:func:`~prunelab.core.inputs.forward`)."""
        return forward(self.model, x, self.output)


class Criterion:
    """Base class: subclasses implement ``weight_scores``; ``unit_scores`` may be refined."""

    name = "criterion"

    def weight_scores(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def weight_function(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """For a criterion whose scores of a layer are a function of that layer's weight alone
        (magnitude: ``torch.abs``), that function; the Pruner then computes them a layer at a
        time where they are read and never holds them. None (the default): scores come from
        ``weight_scores`` and are held once per weights version. A subclass overriding
        ``weight_scores`` must override this too."""
        return None

    def unit_scores(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        fn = self.weight_function()
        if fn is not None:  # a layer at a time: no full set of weight scores at once
            return {l.name: l.rows(fn(l.weight.detach())).sum(1) for l in ctx.layers}
        scores = self.weight_scores(ctx)
        if not isinstance(scores, dict):  # left for the caller's check to name
            return scores
        by_name = {l.name: l for l in ctx.layers}
        return {name: _unit_sums(s, by_name.get(name)) for name, s in scores.items()}

    def __call__(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        return self.weight_scores(ctx)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Magnitude(Criterion):
    """|w|. Units are ranked by the L1 norm of their weights."""

    name = "magnitude"

    def weight_function(self):
        # a subclass with its own weight_scores is ranked by them, not by |w|
        return torch.abs if type(self).weight_scores is Magnitude.weight_scores else None

    def weight_scores(self, ctx):
        return {l.name: l.weight.detach().abs() for l in ctx.layers}


class Random(Criterion):
    """Uniform random scores: the baseline every criterion must beat. Seeded per layer, so the
    same seed gives the same masks on every run."""

    name = "random"

    def weight_scores(self, ctx):
        out = {}
        for i, l in enumerate(ctx.layers):
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + i)
            out[l.name] = torch.rand(l.shape, generator=gen).to(l.weight.device)
        return out

    def unit_scores(self, ctx):
        out = {}
        for i, l in enumerate(ctx.layers):
            gen = torch.Generator().manual_seed(ctx.seed * 1_000_003 + i + 500_009)
            out[l.name] = torch.rand(l.units, generator=gen).to(l.weight.device)
        return out


class Taylor(Criterion):
    """First-order Taylor: the loss change from removing a weight is about |w * dL/dw|. The
    product is taken per batch and averaged over the scoring data (Molchanov et al., 2017/2019).
    A unit's score is the sum over its weights."""

    name = "taylor"

    def weight_scores(self, ctx):
        weights = {l.name: l.weight for l in ctx.layers}
        total = {n: torch.zeros_like(w) for n, w in weights.items()}
        count = 0
        # Frozen weights (requires_grad=False) need their gradient too: without it a frozen layer
        # would score 0 and be pruned first, and a fully frozen model could not backpropagate.
        frozen = [w for w in weights.values() if not w.requires_grad]
        try:
            for w in frozen:
                w.requires_grad_(True)
            for x, y in ctx.batches():
                ctx.model.zero_grad(set_to_none=True)
                with untouched(ctx.model), torch.enable_grad():
                    ctx.loss(ctx.forward(x), y).backward()
                for n, w in weights.items():
                    if w.grad is not None:
                        total[n] += (w.detach() * w.grad).abs()
                count += 1
        finally:
            ctx.model.zero_grad(set_to_none=True)
            for w in frozen:
                w.requires_grad_(False)
        return {n: t / max(count, 1) for n, t in total.items()}


class Attribution(Criterion):
    """Attribution-based importance with captum.

    Each layer's output units are scored by a captum layer attribution method (default
    ``LayerGradientXActivation``; ``LayerConductance`` and others work too) toward the true class,
    as the mean absolute attribution over the scoring data (and over positions, for
    convolutions).

    Unit scores become weight scores by weighting each weight's magnitude by its unit's importance
    relative to its layer: ``score[i, j] = |w[i, j]| * unit[i] / mean(unit)``. A weight survives if it
    is large and feeds an important unit. Dividing by the layer's mean keeps scores on the scale of
    |w| across layers, so global pruning compares them fairly (raw attributions differ in scale from
    layer to layer, and ranking them raw removed whole layers first).

    Layers that are never called as modules in the forward pass (MultiheadAttention's
    ``out_proj`` runs inside a functional call), and weights whose units are not a module's
    outputs (a recurrent layer's gate rows, MultiheadAttention's packed ``in_proj_weight``), have
    no attribution; their units all get the mean score of the other layers, so they are ranked by
    magnitude alone.
    """

    name = "attribution"

    def __init__(self, method: str = "LayerGradientXActivation", **attribute_kwargs):
        self.method = method
        self.attribute_kwargs = attribute_kwargs
        self._units: dict[str, torch.Tensor] | None = None

    def __repr__(self):
        return f"Attribution(method={self.method!r})"

    def unit_scores(self, ctx):
        import captum.attr as attr_lib

        if not ctx.classification:
            raise ValueError("criterion='attribution' attributes toward the true class, so it needs "
                             "class-index targets; use 'magnitude' or 'taylor' for other targets.")
        method_cls = getattr(attr_lib, self.method, None)
        if method_cls is None:
            raise ValueError(f"captum has no layer attribution method {self.method!r}; "
                             "try 'LayerGradientXActivation' or 'LayerConductance'.")
        called, out_dims = _called_layers(ctx)
        if out_dims != 2:
            raise ValueError(f"criterion='attribution' attributes toward one class per sample, but the model's "
                             f"outputs have {out_dims} dimensions (a language model's are [batch, tokens, vocab]), "
                             "so there is no one class to attribute to. Use 'taylor', 'wanda' or 'magnitude'.")
        layers = [l for l in ctx.layers if l.name in called]
        totals = {l.name: torch.zeros(l.units, device=l.weight.device) for l in layers}
        count = 0
        try:
            for x, y in ctx.batches():
                # captum takes positional tensors: keyword inputs go in as a tuple, in key order
                keys = list(x.keys()) if isinstance(x, Inputs) else None
                args = tuple(x[k] for k in keys) if keys else x

                def run(*tensors, keys=keys):
                    with TRACING.shared():  # no fx trace on another thread meanwhile (core/tracing.py)
                        out = ctx.model(**dict(zip(keys, tensors))) if keys else ctx.model(*tensors)
                    return select_output(out, ctx.output)

                for l in layers:  # one layer at a time keeps captum's hooks simple and memory flat
                    method = method_cls(run, l.module)
                    with untouched(ctx.model):
                        a = method.attribute(args, target=y, **self.attribute_kwargs)
                    a = a[0] if isinstance(a, (tuple, list)) else a
                    totals[l.name] += _per_unit(a.detach(), l)
                count += 1
        finally:
            ctx.model.zero_grad(set_to_none=True)
        units = {n: t / max(count, 1) for n, t in totals.items()}
        fallback = torch.stack([u.mean() for u in units.values()]).mean() if units else torch.tensor(1.0)
        for l in ctx.layers:
            if l.name not in units:
                units[l.name] = torch.full((l.units,), float(fallback), device=l.weight.device)
        return units

    def weight_scores(self, ctx):
        units = self.unit_scores(ctx)
        out = {}
        for l in ctx.layers:
            w = l.rows(l.weight.detach().abs())
            unit = units[l.name] / units[l.name].mean().clamp_min(1e-12)
            out[l.name] = l.from_rows(unit[:, None] * w)
        return out


class Wanda(Criterion):
    """Wanda (Sun et al., 2023): ``score[i, j] = |w[i, j]| * ||X_j||``, the weight's magnitude times
    the L2 norm of its input feature over the scoring data (every sample, and every position for
    a sequence). For a convolution, the input feature of a weight is its input channel at its
    kernel position: the norm is over the unfolded input patches (padding and stride as the layer
    runs them), so a weight that only ever sees padding scores 0. Unit scores are the sum of a
    unit's weight scores (its row, or its filter).

    Args:
        per_row: the paper's comparison per output row. Each weight's score becomes its quantile
            within its row (rank / row length, by ``|w| * ||X||``), so any sparsity removes the
            same fraction of every row, within one weight, whether ranked per layer or globally
            (globally it then removes the same fraction of every layer too). Unit scores stay the
            row sums of the plain scores (quantiles sum alike in every row).

    transformers' Conv1D (weight ``[in, out]``) reads its features along the weight's first axis; a recurrent layer's
    ``weight_ih_l0`` (and ``_reverse``) reads the module's input, the last layer's ``weight_hh``
    the hidden states it outputs (the step before each: the initial state, zero unless given, is
    left out); MultiheadAttention's ``in_proj_weight`` reads the query, key and value for its
    three blocks of rows. Weights whose input is not seen (a deeper recurrent layer's
    ``weight_ih``, inputs passed by keyword, a packed sequence's hidden states) and layers never
    called as modules in the forward pass (MultiheadAttention's ``out_proj``) get the mean norm of
    the other layers' features, so they are ranked by magnitude alone.
    """

    name = "wanda"

    def __init__(self, per_row: bool = False):
        if not isinstance(per_row, bool):
            raise TypeError(f"Wanda(per_row=...) takes True or False, not {per_row!r}.")
        self.per_row = per_row

    def __repr__(self):
        return f"Wanda(per_row={self.per_row})"

    def feature_norms(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """``{layer name: ||X||}``, one norm per weight of an output unit's row (``(row_length,)``,
        ``weight.shape[1:]`` for Linear and Conv); for grouped convolutions
        ``(groups, *weight.shape[1:])``, the norms seen by each group; for MultiheadAttention's
        ``in_proj_weight`` ``(3, embed_dim)``, those of the query, key and value."""
        sums: dict[str, torch.Tensor] = {}

        def record(layer, inputs, output):
            sq = input_sq(layer, inputs, output)
            if sq is not None:
                sums[layer.name] = sums[layer.name] + sq if layer.name in sums else sq

        hooks = [l.module.register_forward_hook(lambda m, i, o, l=l: record(l, i, o)) for l in ctx.layers]
        try:
            for x, _ in ctx.batches():
                with untouched(ctx.model), torch.no_grad():
                    call(ctx.model, x)
        finally:
            for h in hooks:
                h.remove()
        norms = {n: s.sqrt() for n, s in sums.items()}
        fallback = float(torch.stack([v.mean() for v in norms.values()]).mean()) if norms else 1.0
        for l in ctx.layers:
            if l.name not in norms:
                conv = isinstance(l.module, nn.modules.conv._ConvNd)
                shape = (l.module.groups, *l.shape[1:]) if conv else (l.row_length,)
                norms[l.name] = torch.full(shape, fallback, device=l.weight.device)
        return norms

    def plain_scores(self, ctx: ScoringContext) -> dict[str, torch.Tensor]:
        """``|w| * ||X||`` per weight, without the per-row quantiles."""
        out = {}
        norms = self.feature_norms(ctx)
        for l in ctx.layers:
            w = l.rows(l.weight.detach().abs())
            norm = norms[l.name].to(w.device)
            groups = norm.numel() // l.row_length  # output unit i belongs to group i // (units / groups)
            norm = norm.reshape(groups, l.row_length).repeat_interleave(l.units // groups, dim=0)
            out[l.name] = l.from_rows(w * norm)
        return out

    def weight_scores(self, ctx):
        scores = self.plain_scores(ctx)
        if not self.per_row:
            return scores
        out = {}
        for l in ctx.layers:
            rows = l.rows(scores[l.name])
            ranks = rows.argsort(1).argsort(1).to(rows.dtype)
            out[l.name] = l.from_rows((ranks + 1) / rows.shape[1])
        return out

    def unit_scores(self, ctx):
        by_name = {l.name: l for l in ctx.layers}
        return {n: by_name[n].rows(s).sum(1) for n, s in self.plain_scores(ctx).items()}


def _unit_sums(s, layer: Layer | None):
    """A unit's score: the sum of its row of weight scores (anything else is left for the check)."""
    if not isinstance(s, torch.Tensor) or layer is None or tuple(s.shape) != tuple(layer.shape):
        return s.reshape(s.shape[0], -1).sum(1) if isinstance(s, torch.Tensor) and s.dim() else s
    return layer.rows(s).sum(1)


def _per_unit(a: torch.Tensor, layer: Layer) -> torch.Tensor:
    """Mean |attribution| per output unit: dim 1 for convolutions, the last dim for Linear and
    transformers' Conv1D."""
    a = a.abs()
    if not isinstance(layer.module, nn.modules.conv._ConvNd):
        return a.reshape(-1, a.shape[-1]).mean(0)
    return a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)


def _called_layers(ctx: ScoringContext) -> tuple[set[str], int]:
    """Layers whose units are their module's outputs and whose module a forward pass calls, and the
    number of dimensions of the output."""
    called: set[str] = set()
    hooks = [l.module.register_forward_hook(lambda m, i, o, n=l.name: called.add(n)) for l in ctx.layers
             if l.attr == "weight"]
    try:
        x, _ = next(iter(ctx.batches()))
        with untouched(ctx.model), torch.no_grad():
            out = ctx.forward(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return called, out.dim()


CRITERIA: dict[str, type[Criterion]] = {c.name: c for c in (Magnitude, Random, Taylor, Attribution, Wanda)}


def get_criterion(criterion: str | Criterion) -> Criterion:
    """Resolve a name or pass a Criterion instance through."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, str) and criterion in CRITERIA:
        return CRITERIA[criterion]()
    raise ValueError(f"unknown criterion {criterion!r}: choose one of {sorted(CRITERIA)} "
                     "or pass a prunelab.Criterion instance.")
