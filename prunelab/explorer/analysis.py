"""The explorer's expensive measurements, run on a private copy of the model in the background.

The live model belongs to the Pruner and changes on the main thread with every slider move, so
background work never touches it: the main thread takes a snapshot of the weights it needs
(cheap, tensors only: :func:`prunelab.core.copies.model_state`) and the worker loads that
snapshot into a copy of the model made once (a :class:`prunelab.core.copies.ModelCopy`).

- importance scores of every unit under several criteria (captum attribution, Taylor, ...), on
  the unmasked weights, handed back to the Pruner's cache so pruning by them is instant;
- input attributions (captum IntegratedGradients) of a few validation samples for the original
  and the current pruned model, and how far they drifted apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..core.copies import ModelCopy, State
from ..core.criteria import get_criterion
from ..core.inputs import Inputs, select_output
from ..core.meter import PROGRESSIVE_FLOPS
from ..core.scores import SCORING_SAMPLES

BIG_SCORE_SAMPLES = 64  # Taylor and attribution score on this many when 2,048 would take minutes (a big model)


def score_subset(pruner, asked: int | None) -> int | None:
    """How many samples the explorer's background scores use: ``asked``; else
    :data:`BIG_SCORE_SAMPLES` for a model whose pass over the Pruner's own scoring samples
    (:data:`~prunelab.core.scores.SCORING_SAMPLES`) would be slow; else None (those samples)."""
    if asked or pruner.flops()[0] * SCORING_SAMPLES <= PROGRESSIVE_FLOPS:
        return asked
    return BIG_SCORE_SAMPLES


def unit_and_weight_scores(shadow: ModelCopy, dense: State, ctx, criterion: str, weights: bool,
                           progress: Callable[[float], None] = lambda f: None) -> dict:
    """``{"units": {layer: tensor}, "weights": {layer: tensor} | None}`` for one criterion on the
    unmasked weights (worker thread). Weight scores are computed only when asked for."""
    model = shadow.load(dense)
    ctx = dataclasses.replace(ctx, model=model, layers=shadow.layers)
    crit = get_criterion(criterion)
    progress(0.0)
    units = crit.unit_scores(ctx)
    progress(0.5 if weights else 1.0)
    out = {"units": units, "weights": crit.weight_scores(ctx) if weights else None}
    progress(1.0)
    return out


# ---------------------------------------------------------------------- input attributions


@dataclass
class Explanations:
    """Input attributions of a few samples, original model beside pruned model."""

    samples: np.ndarray          # indices into the validation data
    inputs: np.ndarray           # (n, *input shape)
    targets: np.ndarray          # attributed class per sample (the true class)
    original: np.ndarray         # (n, *input shape) attributions of the original model
    pruned: np.ndarray           # same, for the pruned model
    predicted_original: np.ndarray
    predicted_pruned: np.ndarray
    drift: np.ndarray            # per sample: 1 - cosine similarity of the two attributions
    revision: int                # explorer revision of the pruned state explained
    sparsity: float              # its overall sparsity
    method: str = "IntegratedGradients"

    @property
    def mean_drift(self) -> float:
        return float(self.drift.mean()) if len(self.drift) else 0.0


def pick_samples(targets: torch.Tensor, n: int, classification: bool) -> np.ndarray:
    """A few fixed validation samples: the first of each class, classes in order (then the next
    samples, when there are fewer classes than ``n``)."""
    y = targets.cpu()
    if not classification:
        return np.arange(min(n, len(y)))
    firsts: dict[int, int] = {}
    for i, c in enumerate(y.tolist()):
        firsts.setdefault(c, i)
    picked = [firsts[c] for c in sorted(firsts)[:n]]
    chosen = set(picked)
    picked += [i for i in range(len(y)) if i not in chosen][: n - len(picked)]
    return np.array(picked)


def integrated_gradients(model: nn.Module, x: torch.Tensor, target: torch.Tensor | None,
                         steps: int = 32, output=None) -> tuple[np.ndarray, np.ndarray]:
    """(attributions, predicted classes) of ``model`` for inputs ``x`` toward ``target``;
    ``output`` selects the attributed tensor (:func:`prunelab.core.inputs.select_output`)."""
    from captum.attr import IntegratedGradients

    def run(inputs):
        return select_output(model(inputs), output)

    with torch.no_grad():
        out = run(x)
    several = out.dim() == 2 and out.shape[1] > 1
    predicted = out.argmax(1) if several else torch.zeros(len(x), dtype=torch.long)
    if target is None and several:
        target = torch.zeros(len(x), dtype=torch.long, device=x.device)  # no classes: explain output 0
    attr = IntegratedGradients(run).attribute(x, target=target, n_steps=steps,
                                                internal_batch_size=max(1, 2048 // max(1, len(x))))
    return attr.detach().float().cpu().numpy(), predicted.cpu().numpy()


def drift(original: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """1 - cosine similarity per sample: 0 when the pruned model attributes like the original,
    1 when unrelated, up to 2 when opposite."""
    a = original.reshape(len(original), -1).astype(np.float64)
    b = pruned.reshape(len(pruned), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(1) / np.where(norms > 0, norms, 1), 0.0)
    return 1 - cos


class Explainer:
    """Computes Explanations on the worker thread; the original model's are computed once."""

    def __init__(self, shadow: ModelCopy, inputs: torch.Tensor, targets: torch.Tensor, classification: bool,
                 samples: int = 6, output=None):
        if isinstance(inputs, Inputs) or not (inputs.is_floating_point() or inputs.is_complex()):
            raise RuntimeError(
                "Input attributions are not available for this model: integrated gradients interpolate "
                "the inputs from a baseline, and token ids (or other integer or keyword inputs) cannot be "
                "interpolated. Everything else works; for importance, prune by 'taylor', 'wanda' or "
                "'magnitude'.")
        self.shadow, self.output = shadow, output
        self.samples = pick_samples(targets, samples, classification)
        idx = torch.as_tensor(self.samples)
        self.x = inputs[idx].clone()
        self.target = targets[idx].clone() if classification else None
        self._original: tuple[np.ndarray, np.ndarray] | None = None

    def __call__(self, original: State, current: State, revision: int, sparsity: float,
                 progress: Callable[[float], None] = lambda f: None) -> Explanations:
        if self._original is None:
            self._original = integrated_gradients(self.shadow.load(original), self.x, self.target,
                                                  output=self.output)
        progress(0.5)
        pruned, predicted = integrated_gradients(self.shadow.load(current), self.x, self.target,
                                                 output=self.output)
        progress(1.0)
        orig, orig_pred = self._original
        target = self.target.cpu().numpy() if self.target is not None else np.zeros(len(self.x), dtype=int)
        return Explanations(self.samples, self.x.float().cpu().numpy(), target, orig, pruned, orig_pred, predicted,
                            drift(orig, pruned), revision, sparsity)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation, ties given their average rank; nan when either is constant."""
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]
