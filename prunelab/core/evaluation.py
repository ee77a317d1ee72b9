"""Measuring a model: outputs on a fixed evaluation set (recomputing only what changed), metrics,
and FLOPs.

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
from .layers import PRUNABLE_TYPES
from .modes import forward_hooks, untouched


@dataclass(frozen=True)
class Metrics:
    """One measurement of the model's current state.

    ``accuracy`` is top-1 accuracy, or the user's metric when one was given (``metric_name``
    says which). Sizes are bytes: ``dense_bytes`` stores every parameter as fp32; ``sparse_bytes``
    stores masked weights as a bitmask plus their nonzero values. FLOPs are per sample.
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
                f"({self.compression_ratio:.1f}x smaller, {self.theoretical_speedup:.1f}x fewer FLOPs)")


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
        targets: the targets.
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
    if metric is None:
        acc, mean_loss, per_class, correct = classification_scores(outputs, targets, classes)
        return acc, mean_loss, per_class, wilson_interval(correct, len(targets))
    per_class = classification_scores(outputs, targets, classes)[2] if classes else ()
    value = check_real(metric(outputs, targets), f"the metric {getattr(metric, '__name__', '')}".rstrip(), METRIC_FIX)
    return value, None if loss is None else check_real(loss(outputs, targets), "the loss", LOSS_FIX), per_class, None


def count_flops(model: nn.Module, example: torch.Tensor, layer_names: list[str]) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on ``example`` (one sample), in total and per named layer.

    A layer's FLOPs are those of the operations that read its weight (matched by storage), so a
    layer used functionally inside another module, like MultiheadAttention's ``out_proj``, counts.
    Models whose only matrix products are plain Linear/Conv modules are counted with hooks instead,
    to the same numbers, because FlopCounterMode imports torch._dynamo (seconds, on opening)."""
    counted = hooked_flops(model, example, layer_names)
    if counted is not None:
        return counted
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    modules = dict(model.named_modules())
    owner = {_storage(layer_weight(model, n)): n for n in layer_names}
    per_layer = dict.fromkeys(layer_names, 0)

    def attributing(formula):
        def counted(*args, out_val=None, **kwargs):
            flops = formula(*args, out_val=out_val, **kwargs)
            readers = {owner.get(_storage(a)) for a in (*args, *kwargs.values())} - {None}
            for n in readers:
                per_layer[n] += int(flops)
            return flops
        counted._get_raw = True  # FlopCounterMode passes raw tensors to such formulas
        return counted

    # Grad enabled on purpose: under no_grad, eval-mode MultiheadAttention (and Transformer
    # layers) take a fused fast path whose op FlopCounterMode does not count, hiding its FLOPs.
    mapping = {op: attributing(f) for op, f in flop_registry.items()}
    with untouched(model), torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(example)
    return int(counter.get_total_flops()), per_layer


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight of the prunable layer called ``name``: the ``weight`` of the module of that name,
    or the parameter of that name (a recurrent layer's ``lstm.weight_ih_l0``, an attention's
    ``attn.in_proj_weight``).

    Example:
        >>> layer_weight(nn.Sequential(nn.Linear(2, 3)), "0").shape
        torch.Size([3, 2])
    """
    module = dict(model.named_modules()).get(name)
    weight = getattr(module, "weight", None) if module is not None else None
    return weight if isinstance(weight, torch.Tensor) else model.get_parameter(name)


def _storage(t) -> int | None:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) else None


# Ops that FlopCounterMode counts (matrix products, convolutions, attention), by name fragment.
_MATMUL_NAMES = ("matmul", "mm", "einsum", "tensordot", "linear", "conv", "attention", "multi_dot", "bilinear",
                 "inner", "dot")


def hooked_flops(model: nn.Module, example: torch.Tensor, layer_names: list[str]):
    """The same count as FlopCounterMode, without it, when every matrix product of the model is a
    plain Linear or Conv module: 2 * multiply-adds of those modules. FlopCounterMode imports
    torch._dynamo (seconds); this takes one forward pass. None when the model does anything else
    that FlopCounterMode would count (or cannot be traced), so the caller falls back to it.

    Args:
        model: the model (its train/eval mode is restored after).
        example: one sample's inputs.
        layer_names: the layers to report.

    Returns:
        ``(total, {layer name: flops})``, or None when hooks cannot count this model.

    Example:
        >>> hooked_flops(nn.Sequential(nn.Linear(4, 2)), torch.zeros(1, 4), ["0"])
        (16, {'0': 16})
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception:
        return None
    modules = dict(model.named_modules())
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = modules.get(node.target)
            if type(m) in PRUNABLE_TYPES:
                continue
            if any(k in type(m).__name__.lower() for k in ("linear", "conv", "attention", "transformer", "rnn",
                                                              "lstm", "gru", "bilinear")):
                return None
        elif node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
            if any(k in name.lower() for k in _MATMUL_NAMES):
                return None
    # Each module's FLOPs go to the layer whose weight it uses (a tied module counts for its layer).
    layer_of = {id(layer_weight(model, n)): n for n in layer_names}
    names = {m: layer_of.get(id(getattr(m, "weight", None)), n) for n, m in modules.items()}
    flops: dict[str, int] = {}

    def count(module, inputs, output):
        n = names[module]
        if isinstance(module, nn.Linear):
            f = 2 * inputs[0].numel() * module.out_features
        else:
            f = 2 * output.numel() * module.weight.shape[1] * module.weight[0, 0].numel()
        flops[n] = flops.get(n, 0) + int(f)

    hooks = [m.register_forward_hook(count) for m in modules.values() if type(m) in PRUNABLE_TYPES]
    try:
        with untouched(model), torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return sum(flops.values()), {n: flops.get(n, 0) for n in layer_names}


class Evaluator:
    """Outputs of ``model`` on fixed inputs, recomputing from the first changed module onward."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024,
                 cache_bytes: int = 512 * 2**20):
        self.model = model
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
                    out = torch.cat([self.model(x) for x in self.inputs.split(self.batch_size)])
                else:
                    start = 0 if (changed is None or self._outputs is None) else self.first_reader(changed)
                    out = torch.cat([self._run(b, x, start)
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
