"""The explorer's one state hub: traits that the controls, views and panels observe.

In the ipyleaflet style, the state of one explorer is traits and only traits: choices are
validated at the door (an unknown criterion, granularity, mode or layer raises ValueError),
dependent state is derived by observers here (``explanations_stale`` from ``revision`` and
``explanations``; ``driver`` from ``action``), and every observer sees each change once.

One bridge brings the Pruner in: :func:`follow` subscribes to ``Pruner.on_change`` and, once per
burst of changes, on the main thread, the Explorer runs :func:`measure`: new dense references when
the unmasked weights moved, then ``metrics``, then ``revision``. Views and panels never call the
Pruner to change it; they read it (masks, weights, layers) when a trait they observe changes, so
a view that observes ``revision`` sees consistent state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from traitlets import Any, Bool, Dict, HasTraits, Instance, Int, Tuple, Unicode, observe, validate

from ..core.checks import GRANULARITIES, check_choice
from ..core.criteria import CRITERIA
from ..core.inputs import forward
from ..core.metrics import Metrics, score_outputs
from ..core.tracing import TRACING
from .actions import DRIVES, Action

# The criteria the controls offer, in the order shown: the core's registry, magnitude (the
# default) first and random (the baseline, which ranks nothing) last.
CRITERION_ORDER = tuple(sorted(CRITERIA, key=lambda name: (name != "magnitude") + (name == "random")))
COMPARED = tuple(c for c in CRITERION_ORDER if c != "random")  # the importance view sets these side by side
INSTANT = ("magnitude", "random")  # scored from the weights alone; the others need data, in the background
NEEDS_SCORING = tuple(c for c in CRITERION_ORDER if c not in INSTANT)
MODES = ("amount", "threshold")  # the sliders set fractions, or an absolute |w| threshold
DRIVERS = tuple(dict.fromkeys(DRIVES.values()))
SLICE_S = 0.15  # one slice of measuring on the main thread; the kernel answers widgets between slices
DENSE_CHUNK = 16  # samples per forward when the dense baseline is measured on a copy (bounded memory)


@dataclass
class DenseReference:
    """The unmasked weights of every prunable layer (one weights version), for views that show
    what pruning removed."""

    version: int
    weights: dict[str, torch.Tensor]   # layer name -> unmasked weight

    def abs_flat(self, layer: str) -> np.ndarray:
        """|w| of one layer's unmasked weight, flattened, as float numpy."""
        return self.weights[layer].detach().abs().reshape(-1).float().cpu().numpy()


def dense_reference(pruner) -> DenseReference:
    """The Pruner's unmasked layer weights now (a copy: the model itself holds masked weights).

    Args:
        pruner: a Pruner.

    Returns:
        A DenseReference of ``pruner.weights_version``.

    Example:
        >>> ref = dense_reference(pruner)
        >>> ref.weights["0"].shape == pruner.layer("0").shape
        True
    """
    with pruner.dense():
        weights = {l.name: l.weight.detach().clone() for l in pruner.layers}
    return DenseReference(pruner.weights_version, weights)


def magnitude_scores(pruner) -> dict[str, np.ndarray]:
    """Unit importance by magnitude (L1 norm of each unit's unmasked weights): instant.

    Args:
        pruner: a Pruner.

    Returns:
        ``{layer name: numpy array of one score per unit}``.

    Example:
        >>> magnitude_scores(pruner)["0"].shape == (pruner.layer("0").units,)
        True
    """
    return {n: s.detach().cpu().numpy() for n, s in pruner.scores("magnitude", units=True).items()}


class ExplorerState(HasTraits):
    """Shared, observable state of one explorer (or of one panel used on its own).

    Args:
        **traits: initial values, e.g. ``layer_names=tuple(pruner.layer_names), layer="2"``.

    Example:
        >>> state = ExplorerState(layer_names=("0", "2"), layer="2")
        >>> state.observe(lambda change: print(change["new"]), "criterion")
        >>> state.criterion = "taylor"
        taylor
        >>> state.granularity = "blocks"
        Traceback (most recent call last):
        ValueError: unknown granularity 'blocks': choose one of ['unstructured', 'structured', '2:4'].
    """

    layer_names = Tuple(help="the Pruner's layer names; when given, `layer` must be one of them")
    layer = Unicode(help="layer shown in the detail views")
    criterion = Unicode("magnitude", help="criterion the controls prune by")
    granularity = Unicode("unstructured")
    mode = Unicode("amount", help="'amount' (fractions) or 'threshold' (absolute |w|)")
    threshold = Any(None, help="the |w| threshold in effect in threshold mode")
    action = Instance(Action, allow_none=True,
                      help="the Action whose change of the Pruner is being measured; None for a change "
                           "made elsewhere (Python, a panel)")
    driver = Unicode("global", help="what set the pruning the sliders show: 'global', 'layers' or 'threshold' "
                                    "(derived from `action`)")
    revision = Int(0, help="moves after every measured change of the Pruner")
    metrics = Any(None, help="Metrics of the current state")
    baseline = Any(None, help="Metrics of the dense model")
    reference = Any(None, help="DenseReference of the unmasked weights")
    scores = Dict(help="{criterion: {layer: np.ndarray of unit scores}} on the unmasked weights, as computed")
    score_errors = Dict(help="{criterion: why its scores could not be computed}")
    explanations = Any(None, help="analysis.Explanations, or None before the first")
    explanations_stale = Bool(True, help="the explanations are not of the current revision (derived)")
    explain_error = Unicode("")
    auto_explain = Bool(True, help="recompute the explanations when changes settle")
    busy = Unicode("", help="what runs in the background, '' when idle")

    @validate("criterion")
    def _valid_criterion(self, proposal):
        check_choice(proposal["value"], CRITERION_ORDER, "criterion")
        return proposal["value"]

    @validate("granularity")
    def _valid_granularity(self, proposal):
        check_choice(proposal["value"], GRANULARITIES, "granularity")
        return proposal["value"]

    @validate("mode")
    def _valid_mode(self, proposal):
        check_choice(proposal["value"], MODES, "mode")
        return proposal["value"]

    @validate("driver")
    def _valid_driver(self, proposal):
        check_choice(proposal["value"], DRIVERS, "driver")
        return proposal["value"]

    @validate("layer")
    def _valid_layer(self, proposal):
        if self.layer_names:
            check_choice(proposal["value"], self.layer_names, "layer")
        return proposal["value"]

    @observe("revision", "explanations")
    def _derive_stale(self, _change):
        ex = self.explanations
        self.explanations_stale = ex is None or ex.revision != self.revision

    @observe("action")
    def _derive_driver(self, change):
        action = change["new"]
        if action is not None and action.drives is not None:
            self.driver = action.drives


def measure(pruner, state: ExplorerState, time_budget: float | None = None) -> Metrics:
    """Bring ``state`` up to the Pruner's current state: the one update after every change.

    When the unmasked weights moved (a fine-tune, ``set_weights``) and the state holds a dense
    reference, the reference and the magnitude scores are rebuilt first (other scores dropped:
    they were of the old weights). Then ``metrics`` is measured and ``revision`` moves, so that a
    view observing ``revision`` sees both.

    Args:
        pruner: the Pruner the state follows.
        state: the ExplorerState to update (on the main thread).
        time_budget: seconds for the measurement (``pruner.evaluate(time_budget=)``): a big model's
            first answer on the samples that fit, ``metrics.complete`` False until :func:`refine`
            has measured the rest. None: every sample.

    Returns:
        The Metrics now in ``state.metrics``.

    Example:
        >>> pruner.prune(0.5)
        >>> measure(pruner, state)  # what follow() runs after each change
        >>> state.metrics == pruner.evaluate()
        True
    """
    ref = state.reference
    if ref is not None and pruner.weights_version != ref.version:
        state.scores = {"magnitude": magnitude_scores(pruner)}
        state.score_errors = {}
        state.reference = dense_reference(pruner)
    state.metrics = pruner.evaluate(time_budget=time_budget)
    state.revision += 1
    return state.metrics


def refine(pruner, state: ExplorerState, time_budget: float = SLICE_S) -> Metrics:
    """Measure more samples of the state :func:`measure` began (continuing where it stopped) and
    put the fuller Metrics in ``state.metrics``; ``revision`` stays (the state is the same).

    Args:
        pruner: the Pruner, in the state last measured. state: its hub.
        time_budget: seconds for this slice (at least one more block of samples is measured).

    Returns:
        The Metrics now in ``state.metrics``.

    Example:
        >>> m = measure(pruner, state, time_budget=0.15)
        >>> while not m.complete: m = refine(pruner, state)
    """
    state.metrics = pruner.evaluate(time_budget=time_budget)
    return state.metrics


class LiveMeasure:
    """Measures the Pruner into the hub in short slices on the kernel's main thread, so widgets
    answer between slices at any model size: :meth:`start` measures a new state's first samples
    at once (the readout shows them: "on 24 of 1,000 samples, refining"), then each slice is
    posted with ``later`` and measures more, until complete. A newer state drops the older
    refinement (its pending slice does nothing).

    Args:
        pruner: the Pruner. state: its hub.
        later: ``later(key, delay, fn)`` (:meth:`~prunelab.explorer.background.Scheduler.later`).
        slice_s: seconds per slice. on_slice: ``on_slice(metrics)`` after every slice.

    Example:
        >>> live = LiveMeasure(pruner, state, scheduler.later)
        >>> pruner.prune(0.5); live.start()       # a first answer now, the rest in slices
        >>> scheduler.wait(); state.metrics.complete
        True
    """

    def __init__(self, pruner, state: ExplorerState, later: Callable, slice_s: float = SLICE_S,
                 on_slice: Callable[[Metrics], None] | None = None):
        self.pruner, self.state, self.later, self.slice_s = pruner, state, later, slice_s
        self.on_slice = on_slice or (lambda m: None)
        self._pending: tuple | None = None  # names the state whose refinement is posted
        self.slices = 0    # slices measured (tests and benchmarks read these)
        self.dropped = 0   # refinements dropped by a newer state

    def _now(self) -> tuple:
        return self.state.revision, self.pruner.history.current.token, self.pruner.weights_version

    def start(self) -> Metrics:
        """Measure the current state's first slice into the hub (``metrics``, then ``revision``)
        and post the rest; a refinement of an older state still pending is dropped.

        Returns: the first Metrics. Example: ``live.start().samples``.
        """
        if self._pending is not None:
            self.dropped += 1
            self._pending = None
        return self._after(measure(self.pruner, self.state, time_budget=self.slice_s))

    @property
    def refining(self) -> bool:
        """True while the current state's measurement is incomplete and its next slice posted."""
        return self._pending is not None

    def _after(self, m: Metrics) -> Metrics:
        self.slices += 1
        self.on_slice(m)
        self._pending = None if m.complete else self._now()
        if self._pending is not None:
            token = self._pending
            self.later("refine", 0.0, lambda: self._step(token))
        return m

    def _step(self, token: tuple) -> None:
        if token != self._pending:
            return  # dropped: a newer state was measured meanwhile
        if token != self._now():  # the Pruner moved and its refresh has not run yet: it will
            self._pending = None
            self.dropped += 1
            return
        self._after(refine(self.pruner, self.state, self.slice_s))


def is_dense(pruner) -> bool:
    """Whether the Pruner is in its dense original state (nothing masked, the original weights)."""
    return not pruner.plans and pruner.weights_version == 0


def follow_baseline(pruner, state: ExplorerState, m: Metrics) -> None:
    """While the dense original is the state measured, its fuller Metrics ``m`` become
    ``state.baseline`` (a big model's baseline refines with its first measurement).

    Example: ``LiveMeasure(pruner, state, later, on_slice=lambda m: follow_baseline(pruner, state, m))``
    """
    base = state.baseline
    if is_dense(pruner) and (base is None or (not base.complete and m.samples > base.samples)):
        state.baseline = m


def dense_metrics(pruner, model, like: Metrics, chunk: int | None = None,
                  progress: Callable[[float], None] = lambda f: None) -> Metrics:
    """The Metrics of the dense original model on every evaluation sample, measured on ``model``
    (a private copy loaded with the original weights; any thread), ``chunk`` samples a forward.

    Args:
        pruner: the Pruner (its evaluation data, output selector, metric and loss; read only).
        model: the copy, loaded. like: Metrics of the Pruner's model, for the sizes.
        chunk: samples per forward (None: the Pruner's batch size); keeps memory bounded.
        progress: ``progress(fraction)`` after each chunk.

    Returns:
        Complete Metrics of the dense model (nothing masked).

    Example:
        >>> base = dense_metrics(pruner, shadow.load(weights), state.metrics, chunk=DENSE_CHUNK)
    """
    parts = pruner.val_inputs.split(min(chunk or pruner.batch_size, pruner.batch_size))
    out = []
    with torch.no_grad():
        for i, x in enumerate(parts):
            with TRACING.shared():  # no fx trace on another thread meanwhile (core/tracing.py)
                out.append(forward(model, x, pruner.output))
            progress((i + 1) / len(parts))
    out = torch.cat(out)
    acc, loss, per_class, _ = score_outputs(out, pruner.val_targets, classes=pruner.classes, metric=pruner.metric,
                                            loss=pruner.loss)
    return dataclasses.replace(like, accuracy=acc, loss=loss, per_class=per_class, nonzero_params=like.params,
                               sparse_bytes=like.dense_bytes, nonzero_flops=like.flops, accuracy_interval=None,
                               samples=len(out), of=len(out))


def follow(pruner, soon: Callable[[str, Callable[[], None]], None], update: Callable[[], None]) -> Callable[[], None]:
    """The one bridge from a Pruner into a state hub: after every change of the Pruner, ``update``
    runs on the main thread, once per burst of changes.

    Args:
        pruner: the Pruner to follow (its ``on_change`` hook; nothing else subscribes to it).
        soon: ``soon(key, fn)``, e.g. ``Scheduler.soon``, which folds a burst into one call.
        update: what to run, e.g. ``lambda: measure(pruner, state)``.

    Returns:
        A function that stops following.

    Example:
        >>> stop = follow(pruner, scheduler.soon, lambda: measure(pruner, state))
        >>> pruner.prune(0.5)  # state.revision moves
        >>> stop()
    """
    return pruner.on_change(lambda: soon("refresh", update))
