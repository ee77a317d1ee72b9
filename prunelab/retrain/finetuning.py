"""Fine-tuning with the masks held, as a job in three parts: prepare, run, apply.

Training never touches the Pruner's own model. :meth:`FinetuneJob.prepare` (on the Pruner's
thread) checks everything (:mod:`.preflight`) and takes a :class:`prunelab.core.copies.PrunerCopy`:
a private copy of the model holding the Pruner's unmasked weights, and its plans.
:meth:`FinetuneJob.run` (on any thread) measures the copy, trains it and measures it again, on an
independent Pruner over the copy (the same measurement the Pruner makes). :meth:`FinetuneJob.apply`
(on the Pruner's thread again) hands the trained weights back as one step of the Pruner's history
and does nothing else: undo steps back, ``reset()`` restores the original weights. The weights
handed back are the trained weights as the model uses them, so pruned weights are zero in the
new unmasked weights too. That keeps later rankings honest: a
weight pruned before fine-tuning ranks lowest afterwards (gradual pruning only adds to the pruned
set), and a slider moved back down revives it at zero, where the next fine-tuning trains it.

A transaction: until ``apply``, nothing of the Pruner changes (model, flags, buffers, history,
caches), so an error, a cancel (:class:`prunelab.retrain.loop.Cancelled`) or a KeyboardInterrupt
at any batch leaves it exactly as it was; ``apply`` is one atomic history step. Only parameters
come back: buffers (BatchNorm statistics) and train/eval flags of the Pruner's model are never
touched. :func:`finetune` is the three parts in a row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..core.base import BasePruner
from ..core.copies import PrunerCopy
from .loop import Hooks, console_progress, train_masked, trained_weights
from .preflight import preflight, rehearse
from .settings import FinetuneSettings


@dataclass(frozen=True)
class FinetuneResult:
    """One fine-tuning run: accuracy on the validation data before and after, the mean training
    loss of each epoch, and the wall time."""

    epochs: int
    accuracy_before: float
    accuracy_after: float
    train_loss: tuple[float, ...]
    seconds: float

    def __str__(self) -> str:
        return (f"fine-tuned {self.epochs} epochs in {self.seconds:.1f} s: accuracy {self.accuracy_before:.1%} -> "
                f"{self.accuracy_after:.1%}")


class FinetuneJob:
    """One fine-tuning run of ``pruner`` with ``settings``, in three parts.

    Args:
        pruner: a BasePruner (or Pruner) with train_data and a loss.
        settings: a :class:`FinetuneSettings` (default: its defaults).

    Attributes:
        total: batches in the whole run (after :meth:`prepare`), for a progress bar.
        accuracy_before, accuracy_after: measured by :meth:`run`, on the copy, before and after training.

    Example:
        >>> job = FinetuneJob(pruner, FinetuneSettings(epochs=2)).prepare()  # doctest: +SKIP
        >>> worker = threading.Thread(target=job.run); worker.start()       # doctest: +SKIP
        >>> worker.join(); result = job.apply()                             # doctest: +SKIP
    """

    def __init__(self, pruner: BasePruner, settings: FinetuneSettings | None = None):
        self.pruner = pruner
        self.settings = settings if settings is not None else FinetuneSettings()
        self.copy: PrunerCopy | None = None
        self.total = 0
        self.accuracy_before = self.accuracy_after = float("nan")
        self._applied = False
        self._weights: dict[str, torch.Tensor] | None = None
        self._losses: list[float] = []

    def prepare(self) -> "FinetuneJob":
        """On the Pruner's thread: check everything, measure the accuracy before, take the copy.

        Returns:
            The job itself (ready to :meth:`run`).

        Raises:
            ValueError, TypeError: for bad settings, or training that cannot run (see
            :func:`prunelab.retrain.preflight.preflight` and :func:`~prunelab.retrain.preflight.rehearse`).
            Nothing has changed then.
        """
        s, p = self.settings, self.pruner
        s.check()
        self._started = time.perf_counter()
        self._batches = preflight(p, s.batch_size)
        copy = PrunerCopy.of(p)
        rehearse(copy, s)
        self.copy, self.total = copy, s.epochs * len(self._batches)
        return self

    def run(self, hooks: Hooks | None = None) -> None:
        """On any thread: train the private copy with its masks held.

        Args:
            hooks: progress after each batch, and cancel (:class:`Hooks`).

        Raises:
            Cancelled: when cancelled (then :meth:`apply` must not be called).
        """
        if self.copy is None:
            raise RuntimeError("call prepare() (on the Pruner's thread) before run().")
        s, c = self.settings, self.copy
        twin = c.pruner()
        self.accuracy_before = twin.evaluate().accuracy
        losses = train_masked(twin.model, twin.masks(), self._batches, c.loss, epochs=s.epochs, lr=s.lr,
                              optimizer=s.optimizer, hooks=hooks, seed=c.seed, output=c.output)
        weights = trained_weights(twin.model)
        twin.set_weights(weights, note="fine-tune")
        self.accuracy_after = twin.evaluate().accuracy
        self._losses, self._weights = losses, weights

    def apply(self) -> FinetuneResult:
        """On the Pruner's thread: the trained weights become one step of history, with the masks
        they were trained with (a mask moved meanwhile is set back); then measure.

        Returns:
            A :class:`FinetuneResult` (``accuracy_after`` as measured by :meth:`run`, which is what
            ``pruner.evaluate()`` gives now).

        Raises:
            RuntimeError: before :meth:`run` completed, or applied already.
        """
        if self._weights is None:
            raise RuntimeError("run() did not complete: there are no trained weights to apply.")
        if self._applied:
            raise RuntimeError("this fine-tuning was applied already; undo() steps back, redo() forward.")
        p, c = self.pruner, self.copy
        plans = p.plans
        if all(plans.get(n) is c.plans.get(n) for n in c.layer_names):
            p.set_weights(self._weights, note="fine-tune")
        else:
            p.set_plans(c.all_plans(), weights=self._weights)
        self._applied = True
        return FinetuneResult(self.settings.epochs, self.accuracy_before, self.accuracy_after, tuple(self._losses),
                              time.perf_counter() - self._started)


def finetune(pruner: BasePruner, epochs: int = FinetuneSettings.epochs, *, lr: float = FinetuneSettings.lr,
             optimizer=FinetuneSettings.optimizer, batch_size: int = FinetuneSettings.batch_size,
             progress: bool = True, hooks: Hooks | None = None) -> FinetuneResult:
    """Retrain ``pruner``'s model on its train_data with the masks held (pruned weights, and their
    optimizer state, stay exactly zero), and apply the trained weights as one step of history.

    Args:
        pruner: a BasePruner (or Pruner) with train_data.
        epochs: passes over the training data.
        lr, optimizer, batch_size: see :class:`FinetuneSettings` (Adam at 1e-3, cosine decay).
        progress: show a progress bar (tqdm).
        hooks: progress after each batch and cancel, for callers on other threads.

    Returns:
        A :class:`FinetuneResult` (accuracy before and after, loss per epoch, seconds).

    Raises:
        ValueError, TypeError: for bad arguments or data, before anything is copied or trained.
        Cancelled: when ``hooks.cancel`` is set; the Pruner is then unchanged, as after any
        exception (a KeyboardInterrupt too) before the trained weights are applied.

    Example:
        >>> pruner.prune(0.9)                                    # doctest: +SKIP
        >>> finetune(pruner, 3, progress=False).accuracy_after   # doctest: +SKIP
        0.95
        >>> pruner.undo()                                        # doctest: +SKIP   (the weights before)
    """
    settings = FinetuneSettings(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=batch_size)
    job = FinetuneJob(pruner, settings).prepare()
    with console_progress(hooks, progress, job.total, "fine-tuning") as run_hooks:
        job.run(run_hooks)
    return job.apply()
