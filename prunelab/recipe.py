"""Recipes: what was done to a model, as JSON, and replaying it on a fresh model.

A recipe records the Pruner's history up to its current state as a list of ``steps`` (the
schedule), plus the settings that decide the masks (seed, batch size, evaluation subset) and, for
checking, the per-layer result: sparsity, criterion, granularity, and a SHA-256 of every mask.

Step kinds (``"kind"``):
- ``"prune"``: ``{"granularity", "criterion", "amount": {layer: fraction}}`` or with
  ``"threshold": {layer: |w|}``; replayed as ``pruner.prune(...)``.
- ``"reset"``: back to the original weights, no masks.
- ``"set_weights"``: new unmasked weights (fine-tuning); recorded, but replaying it needs the
  training that produced them, so :func:`apply_recipe` warns and goes on.
More kinds can be added with :func:`register_step`.

Replaying a recipe on the same starting weights with the same data gives the same masks, bit
for bit (checked against the recorded digests). On differently trained weights of the same
architecture, the same steps give that model's own masks (a warning says they differ).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import warnings
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .core.checks import GRANULARITIES, check_choice, check_fraction, check_layer_names, check_threshold
from .core.criteria import CRITERIA
from .core.files import check_marker, digest, read_file, write_bytes

KIND = "recipe"
FORMAT = "prunelab.recipe"
VERSION = 1

_REPLAYERS: dict[str, Callable] = {}


def register_step(kind: str, replay: Callable[[object, dict, dict], None]) -> None:
    """Teach :func:`apply_recipe` a new kind of step: ``replay(pruner, step, context)``, where
    ``context`` holds ``data``, ``train_data`` and ``criteria`` as passed to apply_recipe."""
    _REPLAYERS[kind] = replay


# ---------------------------------------------------------------------------- recording

def _mask_digest(mask: torch.Tensor) -> str:
    bits = np.packbits(mask.detach().cpu().reshape(-1).numpy())
    return hashlib.sha256(f"{tuple(mask.shape)}|".encode() + bits.tobytes()).hexdigest()


def _weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    return digest(weights)


def _prune_steps(before: Mapping, after: Mapping) -> list[dict]:
    """Steps that turn plans ``before`` into ``after``: clear what went dense, then set each new
    plan, grouped by (granularity, criterion, amount or threshold)."""
    changed = {n: after.get(n) for n in set(before) | set(after) if before.get(n) is not after.get(n)}
    steps = []
    clears: dict[str, list[str]] = {}
    for n, plan in changed.items():
        if plan is None:
            g = "structured" if before[n].granularity == "structured" else "unstructured"
            clears.setdefault(g, []).append(n)
    for g, names in sorted(clears.items()):
        steps.append({"kind": "prune", "granularity": g, "criterion": "magnitude",  # unused at 0: cheapest
                      "amount": {n: 0.0 for n in sorted(names)}})
    sets: dict[tuple, dict] = {}
    for n, plan in changed.items():
        if plan is None:
            continue
        by = "threshold" if plan.threshold is not None else "amount"
        step = sets.setdefault((plan.granularity, plan.criterion, by),
                               {"kind": "prune", "granularity": plan.granularity, "criterion": plan.criterion,
                                by: {}})
        step[by][n] = plan.threshold if by == "threshold" else plan.amount
    for key in sorted(sets):
        step = sets[key]
        by = "threshold" if "threshold" in step else "amount"
        step[by] = dict(sorted(step[by].items()))
        steps.append(step)
    return steps


def record_recipe(pruner) -> dict:
    """The recipe of ``pruner``'s current state: its history up to now (undone steps excluded),
    walked through the public ``pruner.history``.

    Args:
        pruner: the Pruner.

    Returns:
        A JSON-ready dict: ``steps``, the settings that decide the masks, and per-layer checks.

    Example:
        >>> pl.record_recipe(pruner.prune(0.5))["steps"]
        [{'kind': 'prune', 'granularity': 'unstructured', 'criterion': 'magnitude', 'amount': {...}}]
    """
    history = pruner.history
    steps = []
    for before, after in zip(history.steps, history.steps[1:]):
        if after is history.original:
            steps.append({"kind": "reset"})
        elif after.weights is not before.weights:
            steps.append({"kind": "set_weights", "replayable": False,
                          "note": "new unmasked weights (fine-tuning); replay needs the same training"})
            steps.extend(_prune_steps(before.plans, after.plans))
        else:
            steps.extend(_prune_steps(before.plans, after.plans))
    sparsity = pruner.sparsity()
    plans = pruner.plans
    layers = {}
    for l in pruner.layers:
        plan = plans.get(l.name)
        layers[l.name] = {"shape": list(l.shape), "sparsity": sparsity[l.name],
                          "granularity": plan.granularity if plan else None,
                          "criterion": plan.criterion if plan else None,
                          "amount": plan.amount if plan else None,
                          "threshold": plan.threshold if plan else None}
    return {
        "format": FORMAT, "version": VERSION,
        "model_class": type(pruner.model).__qualname__,
        "pruner": {"seed": pruner.seed, "batch_size": pruner.batch_size,
                   "eval_samples": None if len(pruner.val_inputs) == pruner.val_total else len(pruner.val_inputs),
                   "scoring_data": "train_data" if pruner.train_data is not None else "val_data"},
        "steps": steps,
        "layers": layers,
        "overall_sparsity": pruner.overall_sparsity(),
        "check": {"original_weights_sha256": _weights_digest(pruner.original_weights),
                  "masks_sha256": {n: _mask_digest(m) for n, m in sorted(pruner.masks().items())}},
    }


def save_recipe(pruner, path) -> Path:
    """Write :func:`record_recipe` as JSON to ``path`` (all-or-nothing).

    Returns:
        The path written.

    Example:
        >>> save_recipe(pruner, "recipe.json")
    """
    return write_bytes(path, (json.dumps(record_recipe(pruner), indent=2) + "\n").encode())


def load_recipe(path) -> dict:
    """Read a recipe JSON file written by ``pruner.export(path, format="recipe")``.

    Args:
        path: the JSON file.

    Returns:
        The recipe dict (``format``, ``version``, ``steps``, ``layers``, ``check``...), for
        :func:`prunelab.apply_recipe`.

    Raises:
        ValueError: not JSON (damaged or cut short), not an object, or not a prunelab recipe.

    Example:
        >>> [s["kind"] for s in pl.load_recipe("recipe.json")["steps"]]
        ['prune']
    """
    path = Path(path)
    try:
        recipe = json.loads(read_file(path).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is not a prunelab recipe: its JSON is nested too deeply to read (a recipe is "
                         "a few levels deep). Export it again with pruner.export(path, format='recipe').") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a prunelab recipe (not valid JSON: {e}); it may be damaged or cut "
                         "short. Export it again with pruner.export(path, format='recipe').") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path} is not a prunelab recipe (JSON {type(recipe).__name__}, not an object).")
    check_marker(path, recipe.get("format"), KIND, "prunelab.apply_recipe")
    return recipe


# ---------------------------------------------------------------------------- replaying

def _replay_prune(pruner, step: dict, context: dict) -> None:
    name = step.get("criterion") or "magnitude"  # known: check_recipe ran before the first step
    criterion = (context.get("criteria") or {}).get(name, name)
    if "threshold" in step:
        pruner.prune(threshold=step["threshold"], criterion=criterion, granularity=step["granularity"])
    else:
        pruner.prune(step["amount"], criterion=criterion, granularity=step["granularity"])


def _replay_unrecorded_weights(pruner, step: dict, context: dict) -> None:
    warnings.warn("the recipe contains new weights from fine-tuning that were not recorded as a replayable "
                  "step; the replay keeps the current weights, so masks chosen after it may differ.",
                  stacklevel=4)


register_step("prune", _replay_prune)
register_step("reset", lambda pruner, step, context: pruner.reset())
register_step("set_weights", _replay_unrecorded_weights)


def as_recipe(recipe, criteria: Mapping | None = None) -> dict:
    """``recipe`` as a recipe dict whose shape is checked (:func:`check_recipe`): a dict made by
    :func:`record_recipe`, or a file's path."""
    if not isinstance(recipe, dict):
        recipe = load_recipe(recipe)
    elif recipe.get("format") != FORMAT:
        raise ValueError("this dict is not a prunelab recipe (no 'format': 'prunelab.recipe'); make one with "
                         "prunelab.record_recipe(pruner) or pruner.export(path, format='recipe').")
    check_recipe(recipe, criteria=criteria)
    return recipe


def _bad(where: str, what: str) -> ValueError:
    return ValueError(f"the recipe's {where} {what.rstrip('.')}. Export the recipe again with pruner.export(path, "
                      "format='recipe'), or fix it to match what record_recipe writes.")


def _check_map(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(where, f"must be a JSON object, not {type(value).__name__}")
    return value


def check_recipe(recipe: dict, layer_names=None, criteria: Mapping | None = None) -> None:
    """Check ``recipe`` against its schema, before anything is replayed: ``steps`` a list of
    objects of known kinds; prune steps with a known granularity and criterion and an ``amount``
    (fractions) or a ``threshold`` (magnitudes >= 0), per layer or for all; ``layers``, ``pruner``
    and ``check`` objects. With ``layer_names``, every layer a step names must be one of them.

    Raises:
        ValueError: what is wrong where, and what to do.

    Example:
        >>> check_recipe(pl.record_recipe(pruner), pruner.layer_names)
    """
    version = recipe.get("version", VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > VERSION:
        raise ValueError(f"the recipe has version {version!r}; this prunelab reads version {VERSION} and older. "
                         "Update prunelab, or export the recipe again with this one.")
    for key in ("pruner", "check"):
        _check_map(recipe.get(key, {}), f"{key!r}")
    for name, entry in _check_map(recipe.get("layers", {}), "'layers'").items():
        shape = _check_map(entry, f"layer {name!r}").get("shape")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
            raise _bad(f"layer {name!r}", f"needs a 'shape' list of sizes, not {shape!r}")
    steps = recipe.get("steps", [])
    if not isinstance(steps, list):
        raise _bad("'steps'", f"must be a list of step objects, not {type(steps).__name__}")
    for i, step in enumerate(steps):
        kind = _check_map(step, f"step {i}").get("kind")
        if kind not in _REPLAYERS:
            raise ValueError(f"recipe step {i} has kind {kind!r}, which this prunelab cannot replay; known kinds: "
                             f"{sorted(_REPLAYERS)}. Update prunelab, or register it with prunelab.register_step.")
        if kind == "prune":
            _check_prune_step(step, i, layer_names, criteria)


def _check_prune_step(step: dict, i: int, layer_names, criteria: Mapping | None) -> None:
    where = f"step {i}"
    try:
        check_choice(step.get("granularity"), GRANULARITIES, "granularity")
    except ValueError as e:
        raise _bad(where, f"has an {e}") from None
    criterion = step.get("criterion") or "magnitude"
    if not isinstance(criterion, str):
        raise _bad(where, f"names its criterion by a {type(criterion).__name__}, not a string")
    if criterion not in CRITERIA and criterion not in (criteria or {}):
        raise ValueError(f"the recipe uses criterion {criterion!r}, which is not built in: pass "
                         f"criteria={{{criterion!r}: your_criterion_instance}} to apply_recipe.")
    by = [k for k in ("amount", "threshold") if k in step]
    if len(by) != 1:
        raise _bad(where, "needs exactly one of 'amount' (fractions) or 'threshold' (magnitudes)")
    value = step[by[0]]
    check = check_fraction if by[0] == "amount" else check_threshold
    values = value if isinstance(value, dict) else {None: value}
    try:
        for layer, v in values.items():
            if not isinstance(v, numbers.Real):  # (its repr could be a recipe-sized nest)
                raise ValueError(f"{by[0]} {'for layer ' + repr(layer) + ' ' if layer else ''}must be a number, "
                                 f"not a {type(v).__name__}")
            check(v)
        if isinstance(value, dict) and layer_names is not None:
            check_layer_names(list(value), layer_names)
    except ValueError as e:
        raise _bad(where, f"cannot be replayed: {e}") from None


def replay(pruner, recipe: dict, *, data=None, train_data=None, criteria: Mapping | None = None,
           check: bool = True) -> None:
    """Replay the steps of ``recipe`` (see :func:`as_recipe`) on ``pruner``, a fresh Pruner of a
    model with the recorded layers. The whole recipe is checked against its schema and the model's
    layers before its first step runs. :func:`prunelab.apply_recipe` builds the Pruner, calls this,
    and resets the model if a step still fails."""
    check_recipe(recipe, criteria=criteria)
    _check_layers(pruner, recipe)
    check_recipe(recipe, pruner.layer_names, criteria)
    context = {"data": data, "train_data": train_data, "criteria": dict(criteria or {})}
    for step in recipe.get("steps", []):
        _REPLAYERS[step["kind"]](pruner, step, context)
    if check:
        _check_masks(pruner, recipe)


def _check_layers(pruner, recipe: dict) -> None:
    recorded = {n: tuple(v["shape"]) for n, v in recipe.get("layers", {}).items()}
    here = {l.name: l.shape for l in pruner.layers}
    if recorded and recorded != here:
        missing = sorted(set(recorded) - set(here))
        wrong = sorted(n for n in set(recorded) & set(here) if recorded[n] != here[n])
        raise ValueError(f"the model does not match the recipe's {recipe.get('model_class')}: layers missing "
                         f"{missing[:3]}, with other shapes {wrong[:3]}. Pass a fresh instance of the recorded "
                         "model class built with the same arguments.")


def _check_masks(pruner, recipe: dict) -> None:
    expected = recipe.get("check", {}).get("masks_sha256")
    if not isinstance(expected, dict):
        return
    got = {n: _mask_digest(m) for n, m in pruner.masks().items()}
    if got == expected:
        return
    differ = sorted(n for n in set(got) | set(expected) if got.get(n) != expected.get(n))
    same_start = recipe["check"].get("original_weights_sha256") == _weights_digest(pruner.original_weights)
    why = ("the model starts from the recorded weights, so the data or a non-deterministic criterion differs"
           if same_start else "the model's weights differ from the recorded ones, so its own masks were chosen")
    warnings.warn(f"replaying the recipe gave masks that differ from the recorded ones in {differ[:5]} ({why}).",
                  stacklevel=3)
