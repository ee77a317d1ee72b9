"""Checks of user input shared by every floor: each rule is written here once.

A check raises ValueError (or TypeError) naming the bad value, what is allowed, and what to do:
fractions and thresholds, counts, choices, names with a did-you-mean, weights, scores, what a
metric or loss returns. Whether the data fits the model is checked in :mod:`.datachecks`.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Iterable

import torch
from torch import nn

from .layers import Layer, find_layers, is_module_weight

GRANULARITIES = ("unstructured", "structured", "2:4")
SCOPES = ("global", "layer")


def check_fraction(v, what: str = "sparsity", meaning: str = "0.9 prunes 90% of weights") -> float:
    """``v`` as a float in [0, 1], or a ValueError that says what the fraction means.

    Args:
        v: the value to check (a bool is not a number here).
        what: what the value is, for the message.
        meaning: an example of what a value means, for the message.

    Returns:
        ``float(v)``.

    Example:
        >>> check_fraction(0.9)
        0.9
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0 <= v <= 1):
        raise ValueError(f"{what} must be a fraction in [0, 1] ({meaning}), got {v!r}.")
    return float(v)


def check_threshold(v) -> float:
    """``v`` as a float >= 0 (an absolute weight magnitude), or a ValueError.

    Args:
        v: the value to check (NaN, negative numbers and bools are refused).

    Returns:
        ``float(v)``.

    Example:
        >>> check_threshold(0.05)
        0.05
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v != v or v < 0:
        raise ValueError(f"threshold must be a number >= 0 (an absolute weight magnitude), got {v!r}.")
    return float(v)


def check_count(v, what: str, allow_none: bool = False) -> int | None:
    """``v`` as a positive int (``None`` passes when ``allow_none``), or a ValueError naming it.

    Example:
        >>> check_count(256, "batch_size")
        256
    """
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        default = " (or None for all)" if allow_none else ""
        raise ValueError(f"{what} must be a positive whole number{default}, got {v!r}; e.g. {what}=256.")
    return int(v)


def check_seed(v) -> int:
    """``v`` as an int (any whole number is a seed), or a ValueError.

    Example:
        >>> check_seed(0)
        0
    """
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"seed must be a whole number, got {v!r}.")
    return int(v)


def check_real(value, what: str, fix: str) -> float:
    """``value`` (a number or a one-element tensor) as a float, or a TypeError saying what
    ``what`` returned and ``fix``: what it must return instead.

    Example:
        >>> check_real(torch.tensor(0.5), "the metric", "return a float")
        0.5
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    got = f"a tensor shaped {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)[:80]
    raise TypeError(f"{what} returned {got}, not one real number: {fix}.")


LOSS_FIX = ("pass a loss f(outputs, targets) that returns a scalar tensor, e.g. torch.nn.CrossEntropyLoss() "
            "(reduction='mean', not 'none')")
METRIC_FIX = "pass metric=f(outputs, targets) returning a float (or a one-element tensor), e.g. accuracy in [0, 1]"


def check_choice(value, choices, what: str) -> None:
    """A ValueError naming ``value`` and the allowed ``choices`` unless ``value`` is one of them.

    Example:
        >>> check_choice("2:4", GRANULARITIES, "granularity")
    """
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}: choose one of {list(choices)}.")


def did_you_mean(name, known: Iterable[str], n: int = 3) -> str:
    """`` Did you mean 'a', 'b'?`` for the (at most ``n``) names in ``known`` closest to ``name``
    ("" for none).

    Example:
        >>> did_you_mean("fc1", ["fc.1", "fc.2"])
        " Did you mean 'fc.1', 'fc.2'?"
    """
    close = difflib.get_close_matches(str(name), list(known), n=n)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else ""


def check_layer_names(names: Iterable, known: Iterable[str]) -> list[str]:
    """Layer names (or :class:`~prunelab.core.layers.Layer` objects) as names, each one checked.

    Args:
        names: names or Layer objects.
        known: the prunable layer names, in order.

    Returns:
        The names, in the order given.

    Raises:
        ValueError: for an unknown name, with the closest known names and the full list, or a
        layer given twice (by name and by Layer, say), since one of the two would silently win.

    Example:
        >>> check_layer_names(["0"], ["0", "2"])
        ['0']
    """
    known = list(known)
    known_set = set(known)
    out = []
    for n in names:
        n = n.name if isinstance(n, Layer) else n
        if n not in known_set:
            raise ValueError(f"unknown layer {n!r}.{did_you_mean(n, known)} Prunable layers: {known}.")
        if n in out:
            raise ValueError(f"layer {n!r} is given twice (by name and as a Layer, say); give each layer once, "
                             "so it is clear which value holds.")
        out.append(n)
    return out


def unmaskable(model: nn.Module) -> dict[str, str]:
    """``{module name: what to do}`` for the Linear/Conv modules whose weight is computed from
    other tensors rather than held as a Parameter: masks written into it would not hold.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2)); _ = torch.nn.utils.prune.l1_unstructured(m[0], "weight", 0.5)
        >>> list(unmaskable(m))
        ['0']
    """
    from torch.nn.utils import parametrize

    out = {}
    for name, module in model.named_modules():
        if not is_module_weight(module):
            continue
        label = f"the weight of module {name!r}" if name else "the root module's weight"
        if parametrize.is_parametrized(module, "weight"):
            kinds = [type(p).__name__ for p in module.parametrizations.weight]
            out[name] = (f"{label} is parametrized ({', '.join(kinds)}; weight_norm and spectral_norm from "
                         "torch.nn.utils.parametrizations are parametrizations): call "
                         f"torch.nn.utils.parametrize.remove_parametrizations(module, 'weight') first")
        elif not isinstance(module.weight, nn.Parameter):
            if hasattr(module, "weight_mask"):
                how = "torch.nn.utils.prune (weight_orig * weight_mask): call torch.nn.utils.prune.remove(module, 'weight')"
            elif hasattr(module, "weight_g"):
                how = "torch.nn.utils.weight_norm (weight_g, weight_v): call torch.nn.utils.remove_weight_norm(module)"
            elif hasattr(module, "weight_orig"):
                how = ("torch.nn.utils.spectral_norm (weight_orig): call "
                       "torch.nn.utils.remove_spectral_norm(module)")
            else:
                how = "something that sets it on each forward: make it a plain nn.Parameter"
            out[name] = f"{label} is computed by {how} first"
    return out


def check_model(model) -> tuple[list[Layer], dict[str, str]]:
    """Check that ``model`` is a module with prunable layers whose weights are plain Parameters
    (not parametrized, nor computed by torch.nn.utils.prune or weight_norm), and finite weights.

    Args:
        model: what the user passed as the model.

    Returns:
        ``(layers, skipped)`` as :func:`~prunelab.core.layers.find_layers` finds them.

    Example:
        >>> layers, skipped = check_model(torch.nn.Linear(4, 2))
        >>> [l.name for l in layers]
        ['']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    bad = unmaskable(model)
    if bad:
        raise ValueError("prunelab masks weights in place, and these cannot take a mask that holds: "
                         + "; ".join(bad.values()) + ". Nothing was changed.")
    layers, skipped = find_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no prunable layers: prunelab prunes the weights of "
                         "Linear, Conv, transformers' Conv1D, recurrent and attention layers, and found none among "
                         "its submodules.")
    check_finite(model)
    return layers, skipped


def check_finite(model: nn.Module) -> None:
    """A ValueError listing the parameters of ``model`` that hold NaN or inf, if any.

    Example:
        >>> check_finite(torch.nn.Linear(2, 2))
    """
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"the model has non-finite weights (NaN or inf) in {bad[:5]}: pruning rankings "
                         "would be meaningless. Fix or reload the weights first.")


def check_scores(scores, layers: list[Layer], criterion, units: bool) -> dict:
    """Scores a criterion returned, checked before anything uses them: one real, finite tensor per
    layer, shaped like its weight (``units=True``: one score per output unit).

    Args:
        scores: what the criterion returned.
        layers: the layers it was asked to score.
        criterion: the criterion (its name goes in the message).
        units: whether these are unit scores.

    Returns:
        ``scores`` as a dict.

    Raises:
        ValueError / TypeError naming the layer and the criterion.

    Example:
        >>> layer = find_layers(torch.nn.Linear(2, 1))[0][0]
        >>> list(check_scores({"": torch.ones(1, 2)}, [layer], "magnitude", units=False))
        ['']
    """
    name = getattr(criterion, "name", criterion)
    method = "unit_scores" if units else "weight_scores"
    what = f"criterion {name!r}" + ("" if isinstance(criterion, str) else f" ({type(criterion).__name__}.{method})")
    if not isinstance(scores, dict):
        raise TypeError(f"{what} returned {type(scores).__name__}; it must return {{layer name: tensor}}.")
    missing = [l.name for l in layers if l.name not in scores]
    if missing:
        raise ValueError(f"{what} gave no scores for layers {missing}: it must score every layer in ctx.layers "
                         f"(names {[l.name for l in layers]}).")
    for l in layers:
        s, shape = scores[l.name], (l.units,) if units else l.shape
        if not isinstance(s, torch.Tensor) or s.is_complex() or tuple(s.shape) != tuple(shape):
            got = f"shaped {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"{what} gave scores for layer {l.name!r} {got}, but they must be a real tensor "
                             f"shaped {tuple(shape)} ({'one per output unit' if units else 'one per weight'}).")
        bad = int((~torch.isfinite(s)).sum()) if s.is_floating_point() else 0
        if bad:
            raise ValueError(f"{what} gave {bad} non-finite scores (NaN or inf) of {s.numel()} for layer "
                             f"{l.name!r}, so no ranking by them means anything. With taylor or attribution this "
                             "comes from NaN or inf in the scoring data (train_data, else val_data) or in the loss: "
                             "fix or drop those samples.")
    return dict(scores)


def check_weights(weights, base, what: str = "parameter") -> dict:
    """``base`` (``{parameter name: tensor}``) updated with ``weights``, each checked and copied
    to its parameter's device and dtype; ``base`` itself is left as it was.

    Args:
        weights: new tensors by parameter name (names as in ``model.named_parameters()``).
        base: the current tensors by parameter name.
        what: "parameter", or "buffer" (names as in ``model.named_buffers()``), for the messages.

    Returns:
        A new dict: ``base``'s tensors, with those named in ``weights`` replaced by copies.

    Raises:
        ValueError: an unknown name (with a did-you-mean) or a shape that differs.

    Example:
        >>> check_weights({"w": torch.ones(2)}, {"w": torch.zeros(2)})
        {'w': tensor([1., 1.])}
    """
    out = dict(base)
    for n, w in weights.items():
        if n not in out:
            raise ValueError(f"unknown {what} {n!r}.{did_you_mean(n, out)} Names are those of "
                             f"model.named_{what}s().")
        if not isinstance(w, torch.Tensor) or w.shape != out[n].shape:
            raise ValueError(f"{what} {n!r} has shape {tuple(out[n].shape)}, got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}.")
        out[n] = w.detach().to(out[n].device, out[n].dtype).clone()
    return out
