"""Measuring a model: outputs on a fixed evaluation set (recomputing only what changed), metrics,
and FLOPs (counted in :mod:`.flops`, re-exported here).

Incremental evaluation: the model is traced once with torch.fx. After each evaluation the values
alive just before every parametrised node (for a chain, the input of each layer; with residual
connections, the skip tensors too) are kept per batch. When only some modules changed, the run
resumes from the last cached point before the first node that reads them. Models that fx cannot
trace are evaluated with a plain forward; both paths give the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import fx, nn

from .checks import LOSS_FIX, METRIC_FIX, check_real
from .inputs import Inputs, forward, select_output
from .modes import forward_hooks, untouched
from .tokens import is_token_task, token_scores


@dataclass(frozen=True)
class Metrics:
    """One measurement of the model's current state.

    ``accuracy`` is top-1 accuracy, or the user's metric when one was given (``metric_name``
    says which). Sizes are bytes: ``dense_bytes`` stores every parameter as fp32; ``sparse_bytes``
    stores masked weights as a bitmask plus their nonzero values. FLOPs are per sample.
    For token outputs (a language model, :mod:`~prunelab.core.tokens`) ``accuracy`` is the
    (next-)token accuracy over the labelled tokens, ``loss`` their mean cross-entropy and
    ``perplexity`` its exponential (None for other models).
    """

    accuracy: float
    loss: float | None
    per_class: tuple[float, ...]
    samples: int
    data: str
    params: int
    nonzero_params: int
    dense_bytes: int
    sparse_bytes: int
    flops: int
    nonzero_flops: int
    metric_name: str = "accuracy"
    accuracy_interval: tuple[float, float] | None = field(default=None)
    perplexity: float | None = None

    @property
    def compression_ratio(self) -> float:
        return self.params / max(self.nonzero_params, 1)

    @property
    def theoretical_speedup(self) -> float:
        return self.flops / max(self.nonzero_flops, 1)

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero_params / max(self.params, 1)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(compression_ratio=self.compression_ratio, theoretical_speedup=self.theoretical_speedup)
        return d

    def __str__(self) -> str:
        return (f"{self.metric_name} {self.accuracy:.1%} on {self.samples} {self.data} samples, "
                f"{self.nonzero_params:,}/{self.params:,} params nonzero "
                f"({self.compression_ratio:.1f}x smaller, {self.theoretical_speedup:.1f}x fewer FLOPs)"
                + ("" if self.perplexity is None else f", perplexity {self.perplexity:.3f}"))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval for an accuracy measured on n samples."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_scores(logits: torch.Tensor, targets: torch.Tensor, classes: int):
    """(accuracy, mean cross-entropy, per-class accuracy, correct count)."""
    pred = logits.argmax(1)
    hit = (pred == targets)
    loss = float(nn.functional.cross_entropy(logits.float(), targets))
    totals = torch.bincount(targets, minlength=classes)
    # A class without samples has no accuracy: NaN, not a misleading 0.
    per_class = torch.bincount(targets[hit], minlength=classes) / totals
    correct = int(hit.sum())
    return correct / len(targets), loss, tuple(per_class.tolist()), correct


def score_outputs(outputs: torch.Tensor, targets: torch.Tensor, *, classes: int, metric=None,
                  loss=None) -> tuple[float, float | None, tuple[float, ...], tuple[float, float] | None]:
    """Score a model's outputs against the targets, as :meth:`prunelab.Pruner.evaluate` does.

    Args:
        outputs: the model's outputs on the evaluation inputs.
        targets: the targets (token labels ``[batch, tokens]`` for outputs ``[batch, tokens,
            vocab]``: scored per labelled token, see :mod:`~prunelab.core.tokens`).
        classes: the number of classes when the targets are class indices, else 0.
        metric: ``f(outputs, targets) -> float`` replacing top-1 accuracy (required when
            ``classes`` is 0).
        loss: ``f(outputs, targets) -> scalar tensor``, used with ``metric`` (without one, the loss
            is the mean cross-entropy).

    Returns:
        ``(accuracy or metric, loss or None, per-class accuracy or (), Wilson interval or None)``:
        the interval only for top-1 accuracy, the per-class accuracies for class-index targets.

    Example:
        >>> score_outputs(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), classes=2)[0]
        0.5
    """
    tokens = is_token_task(outputs, targets)
    if metric is None and tokens:
        return (*token_scores(outputs, targets)[:2], (), None)
    if metric is None:
        acc, mean_loss, per_class, correct = classification_scores(outputs, targets, classes)
        return acc, mean_loss, per_class, wilson_interval(correct, len(targets))
    per_class = classification_scores(outputs, targets, classes)[2] if classes and not tokens else ()
    value = check_real(metric(outputs, targets), f"the metric {getattr(metric, '__name__', '')}".rstrip(), METRIC_FIX)
    return value, None if loss is None else check_real(loss(outputs, targets), "the loss", LOSS_FIX), per_class, None


class Evaluator:
    """Outputs of ``model`` on fixed inputs, recomputing from the first changed module onward.
    ``output`` selects the measured tensor (:func:`~prunelab.core.inputs.forward`); keyword inputs
    (:class:`~prunelab.core.inputs.Inputs`) take the plain forward."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024,
                 cache_bytes: int = 512 * 2**20, output=None):
        self.model, self.output = model, output
        self.inputs = inputs
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self._caches: list[dict[int, list[torch.Tensor]]] = []
        self._outputs: torch.Tensor | None = None
        self._trace()

    @property
    def incremental(self) -> bool:
        return self._graph is not None

    def _trace(self):
        self._graph = None
        if isinstance(self.inputs, Inputs):  # keyword inputs: one placeholder cannot take them
            return
        try:
            with untouched(self.model):
                gm = fx.symbolic_trace(self.model)
        except Exception:  # untraceable control flow: plain forward it is
            return
        nodes = list(gm.graph.nodes)
        if sum(n.op == "placeholder" for n in nodes) != 1:
            return
        self._gm, self._nodes, self._graph = gm, nodes, gm.graph
        # Modules the interpreter calls as modules: their hooks run. Hooks on modules traced
        # through are baked into the graph as they were when traced; those on the root never run.
        self._called = {n.target for n in nodes if n.op == "call_module"}
        self._traced_hooks = self._graph_hooks()
        index = {n: i for i, n in enumerate(nodes)}
        # Which module each node reads parameters of ("" for none).
        self._reads = []
        for n in nodes:
            if n.op == "call_module":
                self._reads.append(n.target)
            elif n.op == "get_attr":
                self._reads.append(n.target.rpartition(".")[0])
            else:
                self._reads.append(None)
        # Cut points: nodes that read parameters. Live set: earlier values used at or after the cut.
        last_use = {n: max((index[u] for u in n.users), default=index[n]) for n in nodes}
        self._cuts = {}
        for i, r in enumerate(self._reads):
            if r is not None and i > 0:
                self._cuts[i] = [n for n in nodes[:i] if last_use[n] >= i]
        self._inplace = any(_maybe_inplace(n, gm) for n in nodes)
        self._kept_cuts = set(self._cuts)

    def first_reader(self, modules: set[str]) -> int:
        """Index of the first node reading any of ``modules``; 0 when unknown."""
        first = len(self._nodes)
        for m in modules:
            hits = [i for i, r in enumerate(self._reads)
                    if r is not None and (r == m or m.startswith(r + ".") or r.startswith(m + ".") or m == "")]
            if not hits:
                return 0
            first = min(first, hits[0])
        return first

    @torch.no_grad()
    def outputs(self, changed: set[str] | None = None) -> torch.Tensor:
        """Outputs for all inputs, as ``model(x)`` gives them in eval mode. ``changed``: modules
        whose parameters changed since the last call (None: unknown, recompute everything).

        A model with forward hooks the traced graph would skip (on the root module, or on a
        module fx traces through) runs its plain forward, so the hooks run. An error or a
        KeyboardInterrupt part way drops every cached value, so the next call measures the
        current state from scratch; nothing half-updated is served."""
        if self._outputs is not None and changed is not None and not changed:
            return self._outputs
        try:
            with untouched(self.model):
                if self._graph is None or self._graph_hooks() != self._traced_hooks or {"", "*"} & set(self._traced_hooks):
                    self._caches = []  # the traced caches are not kept up to date by a plain run
                    out = torch.cat([forward(self.model, x, self.output) for x in self.inputs.split(self.batch_size)])
                else:
                    start = 0 if (changed is None or self._outputs is None) else self.first_reader(changed)
                    out = torch.cat([select_output(self._run(b, x, start), self.output)
                                     for b, x in enumerate(self.inputs.split(self.batch_size))])
                    self._trim_caches()
        except BaseException:
            self.forget()
            raise
        self._outputs = out
        return out

    def _graph_hooks(self) -> dict[str, tuple]:
        """The forward hooks the traced graph cannot follow: global ones, on the root, and on the
        modules it traces through."""
        return {n: h for n, h in forward_hooks(self.model).items() if n not in self._called}

    def forget(self) -> None:
        """Drop the cached outputs and activations: the next call recomputes everything."""
        self._outputs, self._caches = None, []

    def _run(self, b: int, x: torch.Tensor, start: int) -> torch.Tensor:
        if b >= len(self._caches):
            self._caches.append({})
        cache = self._caches[b]
        resume = max((c for c in cache if c <= start), default=0)
        interp = fx.Interpreter(self._gm, garbage_collect_values=False)
        if resume:
            values = cache[resume]
            interp.env = {n: (v.clone() if self._inplace else v) for n, v in zip(self._cuts[resume], values)}
        else:
            interp.args_iter = iter([x])
        for i in range(resume, len(self._nodes)):
            node = self._nodes[i]
            if i > resume and i in self._kept_cuts:
                live = [interp.env[n] for n in self._cuts[i]]
                cache[i] = [v.clone() for v in live] if self._inplace else live
            result = interp.run_node(node)
            if node.op == "output":
                return result
            interp.env[node] = result
        raise RuntimeError("traced graph has no output node")

    def _trim_caches(self):
        """Keep the latest cut points whose cached values fit the memory budget."""
        if not self._caches:
            return
        sizes = {c: sum(_nbytes(v) for cache in self._caches for v in cache.get(c, [])) for c in self._cuts}
        budget, kept = self.cache_bytes, set()
        for c in sorted(self._cuts, reverse=True):
            if sizes[c] <= budget:
                kept.add(c)
                budget -= sizes[c]
        self._kept_cuts = kept
        for cache in self._caches:
            for c in [c for c in cache if c not in kept]:
                del cache[c]


def _nbytes(v) -> int:
    return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 0


def _maybe_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return bool(node.kwargs.get("inplace", False)) or (name.endswith("_") and not name.endswith("__"))
    return False
