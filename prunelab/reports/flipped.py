"""What pruning breaks: the evaluation samples whose predicted class changed between the dense
model and the current one (the "pruning-identified exemplars" of Hooker et al., 2019).

``pruner.flipped()`` is :func:`flipped`. The dense predictions come from the original weights
(``pruner.original_weights``) loaded into a private copy of the model (:class:`ModelCopy`); the
current predictions are the Pruner's own measured outputs (``pruner.outputs()``, as
``evaluate()`` scores them). The Pruner's model, masks and history are left exactly as they were.

Example:
    >>> pruner.prune(0.9)                         # doctest: +SKIP
    >>> print(pruner.flipped())                   # doctest: +SKIP   (one row per changed sample)
    >>> print(pruner.flipped(by_class=True))      # doctest: +SKIP   (where they cluster)
"""

from __future__ import annotations

import torch

from ..core.base import BasePruner
from ..core.inputs import forward
from ..core.copies import ModelCopy
from ..core.modes import untouched
from ..core.tables import Table

SAMPLE_COLUMNS = ("index", "label", "before", "after", "confidence_before", "confidence_after")
"""One row per changed sample: its index in the evaluation data, its label, the predicted class
before (dense) and after (current), and the softmax probability of each predicted class."""

CLASS_COLUMNS = ("class", "samples", "flipped", "rate", "share", "into", "broken", "fixed",
                 "accuracy_before", "accuracy_after")
"""One row per class (by label): its samples, how many changed prediction, that as a fraction of
the class (``rate``) and of all changed samples (``share``), how many changed samples are now
predicted as this class (``into``: where the flips go), how many went from right to wrong
(``broken``) and from wrong to right (``fixed``), and the class's accuracy before and after."""


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def _conf(v) -> str:
    return f"{v:.3f}"


def check_classification(pruner: BasePruner) -> None:
    """A ValueError unless ``pruner`` measures a classifier (class-index targets, class outputs)."""
    if not pruner.classification:
        raise ValueError("flipped() compares predicted classes, so it needs a classifier: 1-D integer "
                         "class-index targets and one output per class. This Pruner's targets are not class "
                         "indices (it measures with its own metric); compare outputs with pruner.outputs() "
                         "instead.")


def dense_outputs(pruner: BasePruner) -> torch.Tensor:
    """The outputs on the evaluation data of the dense model: the original weights, loaded into a
    private copy (the model's buffers as they are now: the Pruner keeps no earlier buffers).

    Returns:
        A float tensor on the CPU, one row per evaluation sample.
    """
    copy = ModelCopy(pruner.model)
    model = copy.load(pruner.original_weights)
    x, bs = pruner.val_inputs, pruner.batch_size
    with untouched(model), torch.inference_mode():
        return torch.cat([forward(model, x[i:i + bs], pruner.output).float().cpu() for i in range(0, len(x), bs)])


def _predictions(outputs: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its softmax probability) per row of ``outputs``."""
    if outputs.dim() != 2 or outputs.shape[1] != classes:
        raise ValueError(f"flipped() needs outputs of shape (samples, {classes} classes); the model gives "
                         f"{tuple(outputs.shape)}. Wrap the model so that it returns one logit per class.")
    confidence, predicted = torch.softmax(outputs.float(), dim=1).max(dim=1)
    return predicted, confidence


def flipped(pruner: BasePruner, *, by_class: bool = False) -> Table:
    """The evaluation samples whose predicted class differs between the dense and the current model.

    Args:
        pruner: a Pruner over a classifier; it is left exactly as it was.
        by_class: False: one row per changed sample (:data:`SAMPLE_COLUMNS`), by index. True: one
            row per class of the labels (:data:`CLASS_COLUMNS`), the classes with the most changed
            samples first, to see which classes they cluster in.

    Returns:
        A :class:`prunelab.Table`. ``index`` is the position in ``pruner.val_inputs`` /
        ``pruner.val_targets`` (the evaluation data; with ``eval_samples``, its fixed subset).
        With nothing pruned the sample table is empty.

    Raises:
        ValueError: the Pruner does not measure a classifier, or the model's outputs are not one
            logit per class. TypeError: ``by_class`` is not a bool.

    Example:
        >>> pruner.prune(0.9).flipped().column("index")   # doctest: +SKIP
    """
    if not isinstance(by_class, bool):
        raise TypeError(f"by_class must be True or False, got {by_class!r}.")
    check_classification(pruner)
    before, conf_before = _predictions(dense_outputs(pruner), pruner.classes)
    after, conf_after = _predictions(pruner.outputs().detach().float().cpu(), pruner.classes)
    labels = pruner.val_targets.detach().cpu()
    changed = before != after
    sparsity = pruner.overall_sparsity()
    if by_class:
        return _class_table(labels, before, after, changed, sparsity)
    rows = [dict(index=i, label=int(labels[i]), before=int(before[i]), after=int(after[i]),
                 confidence_before=float(conf_before[i]), confidence_after=float(conf_after[i]))
            for i in changed.nonzero().flatten().tolist()]
    return Table(SAMPLE_COLUMNS, rows, formats=dict(confidence_before=_conf, confidence_after=_conf),
                 title="Samples whose prediction changed",
                 note=f"{len(rows)} of {len(labels)} evaluation samples changed class between the dense model "
                      f"(original weights) and the current one ({sparsity:.1%} sparse).")


def _class_table(labels, before, after, changed, sparsity: float) -> Table:
    total = int(changed.sum())
    rows = []
    for c in torch.unique(torch.cat([labels, after[changed]])).tolist():
        of = labels == c
        n, k = int(of.sum()), int((changed & of).sum())
        right_before, right_after = (before == labels) & of, (after == labels) & of
        rows.append({"class": c, "samples": n, "flipped": k, "rate": k / n if n else None,
                     "share": k / total if total else 0.0, "into": int((changed & (after == c)).sum()),
                     "broken": int((right_before & ~right_after).sum()),
                     "fixed": int((right_after & ~right_before).sum()),
                     "accuracy_before": int(right_before.sum()) / n if n else None,
                     "accuracy_after": int(right_after.sum()) / n if n else None})
    rows.sort(key=lambda r: (-r["flipped"], r["class"]))
    return Table(CLASS_COLUMNS, rows, formats={k: _pct for k in ("rate", "share", "accuracy_before", "accuracy_after")},
                 title="Changed predictions by class",
                 note=f"{total} of {len(labels)} evaluation samples changed class between the dense model "
                      f"(original weights) and the current one ({sparsity:.1%} sparse); most changed first. "
                      "A class with no samples (only flips into it) has no rate or accuracy.")
