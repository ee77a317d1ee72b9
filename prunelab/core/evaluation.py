"""Measuring a model: outputs on a fixed evaluation set (recomputing only what changed, in
bounded memory).

FLOP counting lives in :mod:`.flops`, Metrics and scoring in :mod:`.metrics`.

Incremental evaluation: the model is traced once with torch.fx. After each evaluation the values
alive just before every parametrised node (for a chain, the input of each layer; with residual
connections, the skip tensors too) are kept for the cut points chosen within the budget (in
:mod:`.cutcache`: one slab per value for all samples). When only some modules changed, the run
resumes from the last cached point before the first node that reads them. Models that fx cannot
trace are evaluated with a plain forward; both paths give the same outputs.
"""

from __future__ import annotations

import time

import torch
from torch import fx, nn

from .blocking import (aligned_bytes, batch_aligned, choose_cuts, count, indices, join, joined_index, maybe_inplace,
                       nbytes, output_bytes, plan_blocks, split)
from .cutcache import CutCache
from .inputs import Inputs, forward, select_output
from .modes import forward_hooks, untouched
from .tracing import TRACING, symbolic_trace

BLOCK_SECONDS = 0.1  # progressive blocks: a full pass of one block takes about this long (the probe's rate)
# One batch's live activations at most, by device. On CPU the small budget is also the fast one:
# glibc maps freed blocks over 32 MB back to the OS and each new one costs fresh zeroed pages,
# while a heap under about 64 MB is reused (ResNet-50 at 224 px, 2 cores: full passes in batches
# of 3 samples, 32 MiB, ran 2.5x faster than in batches of 27, 256 MiB, with 1/50 of the page
# faults). A GPU's caching allocator reuses memory at any size, and big batches keep it busy.
BATCH_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}
# ... but every batch reads all the weights once: a batch's activations are allowed at least this
# share of the weights' bytes, or a model with big weights and small activations spends its passes
# reading weights (BERT-base, 0.44 GB, in batches of 6 sequences: a quarter slower than of 51).
WEIGHTS_SHARE = 0.25

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
        batch_bytes: budget for one batch's live activations (batches shrink to fit it); None: by
            the model's device (:data:`BATCH_BYTES`).
        order: the order samples are measured in (a permutation of ``range(len(inputs))``, e.g.
            class-stratified); None: as given.
        progressive: blocks grow from two samples (2, 2, 4, 4, 8, ...) up to the size whose
            full pass takes about ``block_seconds`` (timed on the probe), so that a run with a
            deadline answers soon and stops soon after it; consecutive blocks still run as one
            batch (up to the memory cap) when the time allows. False: every block is full size.
        block_seconds: see ``progressive``.

    Example:
        >>> ev = Evaluator(model, x, batch_size=64)                      # doctest: +SKIP
        >>> idx, out = ev.run(deadline=time.perf_counter() + 1.0)       # doctest: +SKIP
        >>> torch.equal(ev.outputs(set()), model(x))                     # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int = 1024,
                 cache_bytes: int = 512 * 2**20, *, batch_bytes: int | None = None,
                 order: torch.Tensor | None = None, progressive: bool = False, output=None,
                 block_seconds: float = BLOCK_SECONDS):
        self.model, self.output = model, output
        self.inputs = inputs
        self.batch_size = batch_size
        self.cache_bytes = cache_bytes
        self.batch_bytes = batch_bytes
        self.order = order
        self.progressive = progressive
        self.block_seconds = block_seconds
        self.group_cap = batch_size  # samples run as one batch at most (fixed by the probe)
        self._caps: list[int] | None = None  # the same for a batch resuming at each node (its activations are smaller)
        self._splittable: set[int] = {0}  # cuts whose values split by sample (fixed by the probe)
        self._splits_output = False
        self.blocks: list | None = None  # sample indices of each block (slices or index tensors), planned once
        self._cache = CutCache([], False)  # the values kept at cut points, per block (made with the blocks)
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
        return self._cache.held

    @property
    def output_bytes(self) -> int:
        """Bytes of the outputs held for the current state."""
        return sum(nbytes(o) for o in self._done if o is not None)

    @property
    def measured(self) -> int:
        """How many samples of the current state are measured."""
        return sum(count(i) for i, o in zip(self.blocks or [], self._done) if o is not None)

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
        self._inplace = any(maybe_inplace(n, gm) for n in nodes)
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
                todo, first = [b for b, o in enumerate(self._done) if o is None], True
                while todo:
                    group = self._group(todo, plain, deadline, first)
                    first = False
                    if group is None:
                        break
                    del todo[:len(group)]
                    self._measure(group, plain)
        except BaseException:
            self.forget()
            raise
        done = [b for b, o in enumerate(self._done) if o is not None]
        index = torch.cat([indices(self.blocks[b]) for b in done])
        return index, torch.cat([self._done[b] for b in done])

    def _group(self, todo: list[int], plain: bool, deadline: float | None, first: bool) -> list[int] | None:
        """The next blocks to run as one batch: the first of ``todo``, joined by the following
        ones while they resume from the same cut, fit one batch and, at the rate of this state
        so far, end before ``deadline``. None when even the first would end after it, unless it is
        the ``first`` of a call (which always runs, so that short budgets progress)."""
        seconds, samples = self._spent
        rate = seconds / samples if samples else None  # none yet: the first block runs alone
        ends = lambda n: deadline is not None and time.perf_counter() + (rate or 0.0) * n > deadline
        group, total = todo[:1], count(self.blocks[todo[0]])
        if not first and ends(total):
            return None
        cap = self.group_cap if plain or self._caps is None else self._caps[max(self._cache.cuts[todo[0]], default=0)]
        for b in todo[1:]:
            more = total + count(self.blocks[b])
            if rate is None or more > cap or ends(more) or not self._joinable(group[-1], b, plain):
                break
            group.append(b)
            total = more
        return group

    def _joinable(self, a: int, b: int, plain: bool) -> bool:
        """Whether block ``b`` can join a batch that ends with block ``a``: the same cuts cached and
        every value at the cut they resume from splits by sample (rows of the same slabs, so
        neighbours join without a copy)."""
        if not self._splits_output:
            return False
        keys = self._cache.cuts[a].keys()
        return plain or (keys == self._cache.cuts[b].keys() and max(keys, default=0) in self._splittable)

    def _measure(self, group: list[int], plain: bool) -> None:
        """Run ``group`` (consecutive blocks) as one batch; their outputs and the rate updated."""
        began = time.perf_counter()
        counts = [count(self.blocks[b]) for b in group]
        resumes = not plain and max(self._cache.cuts[group[0]], default=0) > 0
        x = None if resumes else self.inputs[joined_index([self.blocks[b] for b in group])]  # (a gather: a copy)
        out = self._call(x) if plain else select_output(self._run(group, x), self.output)
        parts = [out] if len(group) == 1 else split(out, counts)
        if parts is None:
            raise RuntimeError("the model's output has no row per sample, so samples cannot be measured in blocks")
        for b, o in zip(group, parts):
            self._done[b] = o
        seconds, samples = self._spent
        self._spent = [seconds + time.perf_counter() - began, samples + sum(counts)]

    def _invalidate(self, changed: set[str] | None, plain: bool) -> None:
        """Drop what ``changed`` makes stale: the outputs, and the cached values downstream of the
        first node reading a changed module."""
        if changed is not None and not changed and any(o is not None for o in self._done):
            return
        self._done = [None] * len(self.blocks)
        self._spent = [0.0, 0]
        self._cache.drop_after(0 if (changed is None or plain) else self.first_reader(changed))

    def _graph_hooks(self) -> dict[str, tuple]:
        """The forward hooks the traced graph cannot follow: global ones, on the root, and on the
        modules it traces through."""
        return {n: h for n, h in forward_hooks(self.model).items() if n not in self._called}

    def forget(self) -> None:
        """Drop the cached outputs and activations: the next call recomputes everything."""
        blocks = self.blocks or []
        self._cache = CutCache([count(b) for b in blocks], self._graph is not None and self._inplace)
        self._done = [None] * len(blocks)
        self._spent = [0.0, 0]

    # ------------------------------------------------------------------ planning the memory

    def _plan(self) -> None:
        """Probe two samples, then fix the blocks and the cut points kept (before any caching).

        Blocks of a progressive run are also capped by time: one block's full pass, at the
        probe's rate, takes about ``block_seconds``, so a deadline can stop soon after it; groups
        of blocks still run up to the memory cap, at full batch size."""
        n = len(self.inputs)
        probe = self.order[:2] if self.order is not None else slice(0, min(2, n))
        x = self.inputs[probe]
        k = count(probe) if isinstance(probe, torch.Tensor) else len(x)
        began = time.perf_counter()
        if self._graph is not None:
            sizes: dict = {}
            out = self._run([-1], x, record=sizes)
            peak = sizes.pop("peak", (0, 0))
            after = [0] * (len(self._nodes) + 1)  # bytes live per sample at most, from each node on
            for i in reversed(range(len(self._nodes))):
                after[i] = max(after[i + 1], sizes.pop(("live", i), 0) / k)
            aligned = sizes.pop("aligned", set())
            self._splittable = {0} | {c for c, live in self._cuts.items()
                                      if all(v in aligned or v.op == "get_attr" for v in live)}
        else:
            sizes, (peak, out) = {}, self._probe_plain(x)
        per_sample = (time.perf_counter() - began) / k
        self._splits_output = batch_aligned(select_output(out, self.output) if self._graph is not None else out, k)
        budget = self.batch_bytes or max(BATCH_BYTES.get(x.device.type, BATCH_BYTES["cuda"]),
                                         WEIGHTS_SHARE * sum(nbytes(p) for p in self.model.parameters()))
        fit = lambda per_sample: max(1, min(self.batch_size, int(budget // max(per_sample, 1))))
        self.group_cap = fit(peak[0] / k)  # memory
        if self._graph is not None:
            self._caps = [fit(p) for p in after]
        cap = self.group_cap
        if self.progressive and self._splits_output:
            cap = max(1, min(cap, int(self.block_seconds / max(per_sample, 1e-9))))
        self.blocks = plan_blocks(n, cap, self.order, self.progressive)
        self.forget()  # empty caches and outputs, one per block
        if self._graph is not None:
            cost = {node: v[0] / k * n + v[1] * len(self.blocks) for node, v in sizes.items()}
            seconds = [sizes.get(node, (0, 0, 0.0))[2] for node in self._nodes]
            self._kept_cuts = choose_cuts(self._cuts, len(self._nodes), cost, seconds, self.cache_bytes, self._inplace)

    def _probe_plain(self, x) -> tuple[tuple[int, int], torch.Tensor]:
        """((bytes of ``x`` and every module's output for it, 0): an upper bound on the live
        activations, the output)."""
        held, out = output_bytes(self.model, lambda: self._call(x))
        return (nbytes(x) + held, 0), out

    # ------------------------------------------------------------------ the traced run

    def _run(self, group: list[int], x: torch.Tensor | None, record: dict | None = None):
        """Run the blocks of ``group`` (one batch: ``x``; None when they resume from a cut) from
        their latest cached cut (all cached cuts are valid: stale ones were dropped), caching the
        planned cuts within the budget. ``record``: probe only, no cache: ``{node: (batch-aligned bytes, other bytes,
        seconds)}``, ``"peak"``: the live bytes at most, ``"aligned"``: the nodes whose value is
        one batch-aligned tensor."""
        caches = [self._cache.cuts[b] for b in group] if record is None else [{}]
        resume = max(caches[0], default=0)
        interp = fx.Interpreter(self._gm, garbage_collect_values=False)
        if resume:  # (in-place graphs resume from copies: the run must not write the cache)
            interp.env = {n: join([c[resume][j] for c in caches], self._inplace) for j, n in enumerate(self._cuts[resume])}
        else:
            interp.args_iter = iter([x])
        live = [0, 0]
        for i in range(resume, len(self._nodes)):
            node = self._nodes[i]
            if record is None and i > resume and i in self._kept_cuts and i not in caches[0]:
                self._store(group, i, interp.env)
            began = time.perf_counter()
            result = interp.run_node(node)
            if node.op == "output":
                return result
            interp.env[node] = result
            if record is not None:
                size = (0, 0) if node.op == "get_attr" else aligned_bytes(result, len(x))
                record[node] = (*size, time.perf_counter() - began)
                live = [live[0] + size[0], live[1] + size[1]]
                record["peak"] = max(record.get("peak", (0, 0)), tuple(live))
                record["live", i] = live[0]
                if batch_aligned(result, len(x)):
                    record.setdefault("aligned", set()).add(node)
            for n in self._free_after.get(i, ()):
                if interp.env.pop(n, None) is not None and record is not None:
                    live = [live[0] - record[n][0], live[1] - record[n][1]]
        raise RuntimeError("traced graph has no output node")

    def _store(self, group: list[int], i: int, env: dict) -> None:
        """Keep the live values at cut ``i`` for every block of ``group``, unless that would pass
        the budget or a value does not split by sample (:meth:`CutCache.store`)."""
        if self._cache.store(group, i, self._cuts[i], [env[n] for n in self._cuts[i]], self.cache_bytes):
            self.peak_cached_bytes = max(self.peak_cached_bytes, self.cached_bytes)
