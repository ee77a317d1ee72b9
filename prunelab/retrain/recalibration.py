"""Recovery without training: BatchNorm statistics re-estimated after pruning, and the mean
contribution of removed units folded into the next layer's bias.

Pruning changes what reaches every normalization layer, while its running statistics still
describe the dense network; re-estimating them on training data (EagleEye, NNCF's BN adaptation)
recovers much of what fine-tuning would, in one pass without gradients. Removed units also take
their mean output with them: FLAP-style bias compensation adds, to the bias of each layer a
removed unit fed, that unit's mean activation (measured on the dense network over the same
calibration batches) times the layer's weight column for it, so the layer's mean output stays.

What happens, in order, on a private copy (:class:`prunelab.core.copies.PrunerCopy`):

1. Bias compensation (``bias_compensation=True``): for every structured plan, the input columns
   of the layers its units feed (the unit group's input slices) that it removed; their mean
   input on the dense network (per feature for Linear, per channel over positions for
   convolutions) times the unmasked weight columns (summed over the kernel) is added to each
   such layer's bias. A layer without a bias gets nothing, and says so in ``uncompensated``.
2. Every BatchNorm (and InstanceNorm with running statistics) is reset and re-estimated with
   ``momentum=None`` (the cumulative average) over the calibration batches, on the pruned network
   with the compensated biases; every other module is in eval mode (dropout off).
3. The same statistics are also re-estimated without the compensation, and the compensation is
   kept only when it gives the lower loss on the calibration batches (their targets; measured
   on digits-cnn, structured: it helps at 30% of filters and costs 10 points at 50%, where the
   dense network's means no longer describe what the pruned layers feed on). Without a loss
   it is kept. ``calibration_losses`` gives both.
4. The new biases (as unmasked weights) and the new buffers become ONE step of the Pruner's
   history (``set_weights(weights, buffers=...)``): ``undo()`` returns the raw pruned state, the
   buffers included, bit for bit; ``reset()`` the original weights and buffers.

A transaction: until ``apply`` nothing of the Pruner changes, so an error or a KeyboardInterrupt
leaves it exactly as it was. :class:`RecalibrateJob` is the three parts (prepare on the
Pruner's thread, run on any thread, apply on the Pruner's thread), so a caller can show the
measured gain before applying it; :func:`recalibrate` runs them in a row.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import torch

from ..core.base import BasePruner
from ..core.copies import PrunerCopy
from ..core.modes import untouched
from .batches import Batches
from .calibration import calibration_loss, compensation, reestimate
from .settings import check_batch_size, check_whole


@dataclass(frozen=True, kw_only=True)
class RecalibrateSettings:
    """What ``recalibrate`` does, every default once.

    Args:
        data: calibration data (as ``train_data``: a DataLoader, a Dataset or an ``(inputs,
            targets)`` pair; targets are not used). None: the Pruner's train_data.
        batches: at most this many batches of it (shuffled from the Pruner's seed).
        batch_size: their size (a DataLoader keeps its own).
        bias_compensation: fold the mean contribution of structurally removed units into the
            bias of the layers they fed.
    """

    data: object = None
    batches: int = 100
    batch_size: int = 64
    bias_compensation: bool = True

    def check(self) -> None:
        """Raise ValueError for a bad number of batches or batch size."""
        check_whole(self.batches, "batches", 1)
        check_batch_size(self.batch_size)
        if not isinstance(self.bias_compensation, bool):
            raise ValueError(f"bias_compensation must be True or False, got {self.bias_compensation!r}.")


@dataclass(frozen=True)
class Recalibration:
    """One recalibration: accuracy measured before and after (on the validation data, as
    ``pruner.evaluate()`` measures), what was re-estimated and compensated, and the time.

    Attributes:
        normalizations: the modules whose running statistics were re-estimated.
        compensated: ``{layer: input columns}`` whose removed inputs' mean went into its bias.
        uncompensated: ``{layer: why not}`` for layers fed by removed units that got nothing.
        samples: calibration samples used.
        calibration_losses: the loss on the calibration batches with the statistics re-estimated
            alone and with the biases compensated too (the lower one was kept).
        applied: whether it became a step of history (False: there was nothing to change).
    """

    accuracy_before: float
    accuracy_after: float
    normalizations: tuple[str, ...]
    compensated: dict[str, int] = field(default_factory=dict)
    uncompensated: dict[str, str] = field(default_factory=dict)
    samples: int = 0
    seconds: float = 0.0
    applied: bool = True
    calibration_losses: dict[str, float] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Accuracy after minus before (a fraction: 0.01 is one point)."""
        return self.accuracy_after - self.accuracy_before

    def readout(self) -> str:
        """The measured result in a few words, e.g. ``after recalibration: 95.8% (+10.2 pts)``."""
        return f"after recalibration: {self.accuracy_after:.1%} ({100 * self.gain:+.1f} pts)"

    def __str__(self) -> str:
        if not self.applied:
            return ("nothing to recalibrate: no BatchNorm with running statistics and no structurally removed unit "
                    "feeding a layer with a bias; the Pruner is unchanged.")
        parts = [f"{self.readout()} from {self.accuracy_before:.1%}, on {self.samples} calibration samples in "
                 f"{self.seconds:.1f} s: {len(self.normalizations)} normalization layer(s) re-estimated"]
        if self.compensated:
            parts.append(f"bias compensated in {', '.join(self.compensated)}")
        reasons: dict[str, list[str]] = {}
        for layer, why in self.uncompensated.items():
            reasons.setdefault(why, []).append(layer)
        parts += [f"not compensated in {', '.join(layers)}: {why}" for why, layers in reasons.items()]
        return "; ".join(parts) + "."


class RecalibrateJob:
    """One recalibration of ``pruner``, in three parts (see the module's docstring).

    Args:
        pruner: a BasePruner (or Pruner).
        settings: a :class:`RecalibrateSettings` (default: its defaults).

    Attributes:
        result: the :class:`Recalibration` measured by :meth:`run` (None before).

    Example:
        >>> job = RecalibrateJob(pruner).prepare()   # doctest: +SKIP   (the Pruner's thread)
        >>> job.run(); job.result.readout()          # doctest: +SKIP   (any thread: measured, not applied)
        'after recalibration: 95.8% (+10.2 pts)'
        >>> job.apply()                              # doctest: +SKIP   (the Pruner's thread: one history step)
    """

    def __init__(self, pruner: BasePruner, settings: RecalibrateSettings | None = None):
        self.pruner = pruner
        self.settings = settings if settings is not None else RecalibrateSettings()
        self.result: Recalibration | None = None
        self.copy: PrunerCopy | None = None
        self._weights = self._buffers = None
        self._applied = False

    def prepare(self) -> "RecalibrateJob":
        """On the Pruner's thread: check the settings and data, take the calibration batches and the copy.

        Raises:
            ValueError, TypeError: bad settings, no data, buffers changed behind the Pruner's back.
            Nothing has changed then.
        """
        s, p = self.settings, self.pruner
        s.check()
        data = p.train_data if s.data is None else s.data
        if data is None:
            raise ValueError("recalibration needs calibration data: pass data=... (a DataLoader, a Dataset or an "
                             "(inputs, targets) pair) or create the Pruner with train_data=...; it never calibrates "
                             "on val_data, which measures the result.")
        recorded = p.history.current.buffers or {}
        moved = [n for n, b in p.model.named_buffers() if n in recorded and not torch.equal(b, recorded[n])]
        if moved:
            raise ValueError(f"the model's buffers {moved[:3]} changed behind the Pruner's back (a forward pass in "
                             "train mode updates BatchNorm statistics), so undo could not return to them: "
                             "pruner.reset() restores the original buffers (and weights); then prune and "
                             "recalibrate again.")
        self._started = time.perf_counter()
        batches = Batches(data, s.batch_size, p.device, p.seed)
        self._batches = list(itertools.islice(iter(batches), s.batches))
        self._token = p.history.current.token
        self.copy = PrunerCopy.of(p)
        return self

    def run(self) -> Recalibration:
        """On any thread: compensate, re-estimate and measure on the private copy (the Pruner is untouched).

        Returns:
            The :class:`Recalibration` (also :attr:`result`), measured as ``pruner.evaluate()`` would.
        """
        if self.copy is None:
            raise RuntimeError("call prepare() (on the Pruner's thread) before run().")
        s, twin, batches = self.settings, self.copy.pruner(), self._batches
        before = twin.evaluate().accuracy
        biases, done, skipped = {}, {}, {}
        if s.bias_compensation:
            unmasked = dict(twin.history.current.weights)
            with twin.dense() as model, untouched(model):
                biases, done, skipped = compensation(twin, model, unmasked, batches)
        buffers = reestimate(twin.model, batches)  # the statistics alone first
        if buffers:
            twin.set_weights({}, buffers=buffers)
        losses = {"statistics only": calibration_loss(twin, batches)}
        if biases:  # then with the biases compensated: kept only when it lowers the calibration loss
            if buffers:
                twin.undo()
            twin.set_weights(biases)
            with_biases = reestimate(twin.model, batches)
            if with_biases:
                twin.set_weights({}, buffers=with_biases)
            losses["with bias compensation"] = calibration_loss(twin, batches)
            if losses["with bias compensation"] is None or losses["with bias compensation"] <= losses["statistics only"]:
                buffers = with_biases
            else:
                skipped.update({k: "compensating raised the loss on the calibration batches, so no layer's bias "
                                   "was changed" for k in done})
                biases, done = {}, {}
                twin.undo()
                if with_biases:
                    twin.undo()
                if buffers:
                    twin.set_weights({}, buffers=buffers)
        changed = bool(biases) or bool(buffers)
        after = twin.evaluate().accuracy if changed else before
        samples = sum(len(x) for x, _ in batches)
        names = tuple(dict.fromkeys(n.rpartition(".")[0] for n in buffers))
        self._weights, self._buffers = (biases or None), buffers
        self.result = Recalibration(before, after, names, done, skipped, samples, time.perf_counter() - self._started,
                                    changed, {k: v for k, v in losses.items() if v is not None})
        return self.result

    def apply(self) -> Recalibration:
        """On the Pruner's thread: the compensated biases and the new buffers become one step of history.

        Returns:
            The :class:`Recalibration` (``accuracy_after`` is what ``pruner.evaluate()`` gives now).

        Raises:
            RuntimeError: before :meth:`run`, applied already, or the Pruner moved since :meth:`prepare`.
        """
        if self.result is None:
            raise RuntimeError("run() did not complete: there is no recalibration to apply.")
        if self._applied:
            raise RuntimeError("this recalibration was applied already; undo() steps back, redo() forward.")
        if self.pruner.history.current.token != self._token:
            raise RuntimeError("the Pruner changed since this recalibration was prepared: recalibrate again.")
        if self.result.applied:
            self.pruner.set_weights(self._weights, buffers=self._buffers)
        self._applied = True
        return self.result


def recalibrate(pruner: BasePruner, data=None, *, batches: int = RecalibrateSettings.batches,
                batch_size: int = RecalibrateSettings.batch_size,
                bias_compensation: bool = RecalibrateSettings.bias_compensation) -> Recalibration:
    """Re-estimate the BatchNorm statistics of the pruned model on calibration data and fold the
    mean contribution of structurally removed units into the next layers' biases, as ONE step of
    history (see the module's docstring).

    Args:
        pruner: a BasePruner (or Pruner).
        data: calibration data; default: the Pruner's train_data.
        batches, batch_size: at most ``batches`` batches of ``batch_size`` samples.
        bias_compensation: also fold the removed units' mean into the next layers' biases.

    Returns:
        A :class:`Recalibration`: accuracy before and after (measured), what changed.

    Raises:
        ValueError, TypeError: bad arguments or data, before anything changes. The Pruner is
            unchanged after any exception (KeyboardInterrupt included).

    Example:
        >>> pruner.prune(0.3, granularity="structured")        # doctest: +SKIP
        >>> recalibrate(pruner).readout()                      # doctest: +SKIP
        'after recalibration: 95.8% (+10.2 pts)'
        >>> pruner.undo()                                      # doctest: +SKIP   (the raw pruned state)
    """
    settings = RecalibrateSettings(data=data, batches=batches, batch_size=batch_size,
                                   bias_compensation=bias_compensation)
    job = RecalibrateJob(pruner, settings).prepare()
    job.run()
    return job.apply()
