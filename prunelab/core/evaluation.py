"""Measuring a model: outputs on a fixed evaluation set (recomputing only what changed, in
bounded memory).

FLOP counting lives in :mod:`.flops`, Metrics and scoring in :mod:`.metrics`.

Incremental evaluation: the model is traced once with torch.fx. After each evaluation the values
alive just before every parametrised node (for a chain, the input of each layer; with residual
connections, the skip tensors too) are kept per batch. When only some modules changed, the run
resumes from the last cached point before the first node that reads them. Models that fx cannot
trace are evaluated with a plain forward; both paths give the same outputs.
"""

from __future__ import annotations

import time

import torch
from torch import fx, nn

from .inputs import Inputs, forward, select_output
from .modes import forward_hooks, untouched
from .tracing import TRACING, symbolic_trace

class Evaluator:
    """Outputs of ``model`` on fixed inputs, block by block, recomputing from the first changed
    module onward, in memory bounded by design.

    Before the first pass a probe on two samples measures the size per sample of every value
    the traced graph makes. From it the evaluator decides, before anything is cached, (a) how many
    samples a block holds, so one block's live activations fit ``batch_bytes``, and (b) which cut
    points it keeps values of, for every block, within ``cache_bytes`` (greedily, by the time a
    cut saves per byte it costs). A store that would pass the budget is skipped, so the cached
    bytes never exceed it at any moment of a pass. Peak memory: the model, one block's
    activations, the cache budget and the outputs, whatever the number of samples.

    Args:
        model: the model (run in eval mode; its modes and buffers restored after).
        inputs: the inputs, one row per sample.
        batch_size: at most this many samples per block.
        cache_bytes: budget for the cached values of all blocks together.
        batch_bytes: budget for one block's live activations (blocks shrink to fit it).
        order: the order samples are measured in (a permutation of ``range(len(inputs))``, e.g.
            class-stratified); None: as given.
        progressive: blocks grow from two samples (2, 2, 4, 4, 8, ...), so that a run with a
            deadline answers soon; False: every block is full size.

    Example:
        >>> ev = Evaluator(model, x, batch_size=64)                      # doctest: +SKIP
        >>> idx, out = ev.run(deadline=time.perf_counter() + 1.0)       # doctest: +SKIP
        >>> torch.equal(ev.outputs(set()), model(x))                     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024,
                 cache_bytes: int = 512 * 2**20, *, batch_bytes: int = 256 * 2**20,
                 order: torch.Tensor | None = None, progressive: bool = False, output=None):
        self.model, self.output = model, output
        self.inputs = inputs
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self.batch_bytes = batch_bytes
        self.order = order
        self.progressive = progressive
        self.blocks: list | None = None  # sample indices of each block (slices or index tensors), planned once
        self._caches: list[dict[int, list[torch.Tensor]]] = []
        self._held: list[int] = []  # cached bytes per block
        self._done: list[torch.Tensor | None] = []  # outputs per block, for the current state
        self._spent = [0.0, 0]  # seconds and samples run in the current state (the rate of the next block)
        self.peak_cached_bytes = 0
        self._trace()

    @property
    def incremental(self) -> bool:
        return self._graph is not None

    @property
    def cached_bytes(self) -> int:
        """Bytes of the activations cached now (all blocks)."""
        return sum(self._held)

    @property
    def output_bytes(self) -> int:
        """Bytes of the outputs held for the current state."""
        return sum(_nbytes(o) for o in self._done if o is not None)

    @property
    def measured(self) -> int:
        """How many samples of the current state are measured."""
        return sum(_count(i) for i, o in zip(self.blocks or [], self._done) if o is not None)

    def _call(self, x):
        """The model's measured output (``output`` selects it, :func:`~prunelab.core.inputs.forward`)
        on one block's inputs, outside the traced path (the one place it is called)."""
        return forward(self.model, x, self.output)

    def _trace(self):
        self._graph = None
        if isinstance(self.inputs, Inputs):  # keyword inputs: one placeholder cannot take them
            return
        try:
            with untouched(self.model):
                gm = symbolic_trace(self.model)
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
        self._free_after: dict[int, list[fx.Node]] = {}
        for n, i in last_use.items():
            self._free_after.setdefault(i, []).append(n)
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
        """Outputs for all inputs, as ``model(x)`` gives them in eval mode (block by block), in
        the inputs' order. ``changed``: modules whose parameters changed since the last call
        (None: unknown, recompute everything; empty: the same state, so finish what is left).

        A model with forward hooks the traced graph would skip (on the root module, or on a
        module fx traces through) runs its plain forward, so the hooks run. An error or a
        KeyboardInterrupt part way drops every cached value, so the next call measures the
        current state from scratch; nothing half-updated is served."""
        index, out = self.run(changed)
        if self.order is None:
            return out
        full = torch.empty_like(out)
        full[index.to(out.device)] = out
        return full

    @torch.no_grad()
    def run(self, changed: set[str] | None = None, deadline: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Measure the current state's blocks in order until all are done, or until the next
        one would end after ``deadline`` (a ``time.perf_counter()`` value). Every call measures
        at least one block when any is left, so calls with short budgets always progress. A later
        call with ``changed`` empty continues where this one stopped.

        Args:
            changed: as for :meth:`outputs`.
            deadline: when to stop; None: measure every sample.

        Returns:
            ``(indices, outputs)``: the samples measured so far for this state (a prefix of the
            measuring order) and their outputs, row for row.
        """
        try:
            with TRACING.shared(), untouched(self.model):  # the interpreter calls modules: no trace meanwhile
                if self.blocks is None:
                    self._plan()
                plain = (self._graph is None or self._graph_hooks() != self._traced_hooks
                         or bool({"", "*"} & set(self._traced_hooks)))
                self._invalidate(changed, plain)
                ran = 0
                for b, idx in enumerate(self.blocks):
                    if self._done[b] is not None:
                        continue
                    seconds, samples = self._spent
                    expected = seconds / max(samples, 1) * _count(idx)  # at the rate of this state so far
                    if ran and deadline is not None and time.perf_counter() + expected > deadline:
                        break
                    ran += 1
                    began = time.perf_counter()
                    x = self.inputs[idx]
                    self._done[b] = self._call(x) if plain else select_output(self._run(b, x), self.output)
                    self._spent = [seconds + time.perf_counter() - began, samples + _count(idx)]
        except BaseException:
            self.forget()
            raise
        done = [b for b, o in enumerate(self._done) if o is not None]
        index = torch.cat([_indices(self.blocks[b]) for b in done])
        return index, torch.cat([self._done[b] for b in done])

    def _invalidate(self, changed: set[str] | None, plain: bool) -> None:
        """Drop what ``changed`` makes stale: the outputs, and the cached values downstream of the
        first node reading a changed module."""
        if changed is not None and not changed and any(o is not None for o in self._done):
            return
        self._done = [None] * len(self.blocks)
        self._spent = [0.0, 0]
        start = 0 if (changed is None or plain) else self.first_reader(changed)
        for b, cache in enumerate(self._caches):
            for c in [c for c in cache if c > start]:
                del cache[c]
            self._held[b] = _unique_bytes(cache.values())

    def _graph_hooks(self) -> dict[str, tuple]:
        """The forward hooks the traced graph cannot follow: global ones, on the root, and on the
        modules it traces through."""
        return {n: h for n, h in forward_hooks(self.model).items() if n not in self._called}

    def forget(self) -> None:
        """Drop the cached outputs and activations: the next call recomputes everything."""
        n = len(self.blocks or [])
        self._caches, self._held, self._done = [{} for _ in range(n)], [0] * n, [None] * n
        self._spent = [0.0, 0]

    # ------------------------------------------------------------------ planning the memory

    def _plan(self) -> None:
        """Probe two samples, then fix the blocks and the cut points kept (before any caching)."""
        n = len(self.inputs)
        probe = self.order[:2] if self.order is not None else slice(0, min(2, n))
        x = self.inputs[probe]
        k = _count(probe) if isinstance(probe, torch.Tensor) else len(x)
        if self._graph is not None:
            sizes: dict = {}
            self._run(-1, x, record=sizes)
            peak = sizes.pop("peak", (0, 0))
        else:
            sizes, peak = {}, self._probe_plain(x)
        cap = max(1, min(self.batch_size, int(self.batch_bytes // max(peak[0] / k, 1))))  # samples per block
        self.blocks = _blocks(n, cap, self.order, self.progressive)
        self.forget()  # empty caches and outputs, one per block
        if self._graph is not None:
            cost = {node: v[0] / k * n + v[1] * len(self.blocks) for node, v in sizes.items()}
            self._kept_cuts = self._choose_cuts(cost, [sizes.get(node, (0, 0, 0.0))[2] for node in self._nodes])

    def _probe_plain(self, x) -> tuple[int, int]:
        """(bytes of every module's output for ``x``, 0): an upper bound on the live activations."""
        total = [_nbytes(x)]
        hooks = [m.register_forward_hook(lambda m, i, o: total.append(_tree_bytes(o))) for m in self.model.modules()]
        try:
            self._call(x)
        finally:
            for h in hooks:
                h.remove()
        return sum(total), 0

    def _choose_cuts(self, cost: dict, seconds: list[float]) -> set[int]:
        """Cut points whose values, for every block, fit ``cache_bytes``, chosen greedily by the
        time they save per byte: a move at any parametrised node resumes at the latest kept cut
        before it, so keeping cut ``c`` saves the probe's time from the previous kept cut to ``c``
        for every cut point between ``c`` and the next kept one."""
        cuts = sorted(self._cuts)
        done = [0.0]
        for t in seconds:  # done[i]: time to reach node i from the start
            done.append(done[-1] + t)
        kept, have, budget = set(), set(), self.cache_bytes

        def extra(c):
            return sum(cost.get(v, 0) for v in self._cuts[c] if self._inplace or v not in have)

        while True:
            marks = sorted(kept)
            best, best_value = None, 0.0
            for j, c in enumerate(cuts):
                if c in kept or extra(c) > budget:
                    continue
                before = max((m for m in marks if m < c), default=0)
                after = min((m for m in marks if m > c), default=len(self._nodes))
                served = sum(1 for d in cuts[j:] if d < after)
                value = (done[c] - done[before]) * served / max(extra(c), 1)
                if value > best_value:
                    best, best_value = c, value
            if best is None:
                return kept
            budget -= extra(best)
            kept.add(best)
            have.update(self._cuts[best])

    # ------------------------------------------------------------------ the traced run

    def _run(self, b: int, x: torch.Tensor, record: dict | None = None) -> torch.Tensor:
        """Run block ``b`` from its latest cached cut (all cached cuts are valid: stale ones were
        dropped), caching the planned cuts within the budget. ``record``: probe only, no cache:
        ``{node: (batch-aligned bytes, other bytes, seconds)}`` and ``"peak"``: the live bytes at most."""
        cache = self._caches[b] if record is None else {}
        resume = max(cache, default=0)
        interp = fx.Interpreter(self._gm, garbage_collect_values=False)
        if resume:
            values = cache[resume]
            interp.env = {n: (v.clone() if self._inplace else v) for n, v in zip(self._cuts[resume], values)}
        else:
            interp.args_iter = iter([x])
        live = [0, 0]
        for i in range(resume, len(self._nodes)):
            node = self._nodes[i]
            if record is None and i > resume and i in self._kept_cuts and i not in cache:
                self._store(b, cache, i, [interp.env[n] for n in self._cuts[i]])
            began = time.perf_counter()
            result = interp.run_node(node)
            if node.op == "output":
                return result
            interp.env[node] = result
            if record is not None:
                size = (0, 0) if node.op == "get_attr" else _aligned_bytes(result, len(x))
                record[node] = (*size, time.perf_counter() - began)
                live = [live[0] + size[0], live[1] + size[1]]
                record["peak"] = max(record.get("peak", (0, 0)), tuple(live))
            for n in self._free_after.get(i, ()):
                if interp.env.pop(n, None) is not None and record is not None:
                    live = [live[0] - record[n][0], live[1] - record[n][1]]
        raise RuntimeError("traced graph has no output node")

    def _store(self, b: int, cache: dict, i: int, values: list) -> None:
        """Cache the live values at cut ``i`` of block ``b``, unless that would pass the budget."""
        held = {id(v) for vs in cache.values() for v in vs}
        extra = sum(_nbytes(v) for v in {id(v): v for v in values if id(v) not in held or self._inplace}.values()
                    if not isinstance(v, nn.Parameter))
        if self.cached_bytes + extra > self.cache_bytes:
            return
        cache[i] = [v.clone() for v in values] if self._inplace else values
        self._held[b] += extra
        self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)


def _blocks(n: int, cap: int, order: torch.Tensor | None, progressive: bool) -> list:
    """Sample indices per block: slices of ``cap`` in the inputs' order, or, with an ``order``,
    chunks of it (growing 2, 2, 4, 4, ... up to ``cap`` when ``progressive``)."""
    sizes, done, size = [], 0, 2 if progressive else cap
    while done < n:
        step = min(size, cap, n - done)
        sizes.append(step)
        done += step
        if progressive and len(sizes) % 2 == 0:
            size *= 2
    if order is None:
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return [slice(s, s + z) for s, z in zip(starts, sizes)]
    return list(order.split(sizes))


def _count(index) -> int:
    return index.stop - index.start if isinstance(index, slice) else len(index)


def _indices(index) -> torch.Tensor:
    return torch.arange(index.start, index.stop) if isinstance(index, slice) else index


def _aligned_bytes(v, k: int) -> tuple[int, int]:
    """(bytes of the tensors in ``v`` whose first dimension is the batch's ``k``, bytes of the others)."""
    if isinstance(v, torch.Tensor):
        return (_nbytes(v), 0) if v.dim() and v.shape[0] == k else (0, _nbytes(v))
    if isinstance(v, (tuple, list)):
        parts = [_aligned_bytes(t, k) for t in v]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    return 0, 0


def _tree_bytes(v) -> int:
    if isinstance(v, dict):
        v = list(v.values())
    return _nbytes(v) if isinstance(v, torch.Tensor) else sum(map(_tree_bytes, v)) if isinstance(v, (tuple, list)) else 0


def _unique_bytes(lists) -> int:
    seen = {id(v): v for vs in lists for v in vs}
    return sum(_nbytes(v) for v in seen.values() if not isinstance(v, nn.Parameter))


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
