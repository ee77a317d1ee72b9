"""Models and data named by import path, as ASGI servers name apps: ``mypkg.models:build``.

``MODULE:ATTRIBUTE`` imports ``MODULE`` (the current folder is on the path, as for ``uvicorn``)
and takes ``ATTRIBUTE`` (dots reach inside it: ``mod:Factory.small``). A function or class is
called with no arguments; anything else is used as it is. Every failure is a :class:`PathError`
with one line saying what was wrong and what to do.

Example:
    >>> model = load_model("torch.nn:Identity")
    >>> type(model).__name__
    'Identity'
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from pathlib import Path

from torch import nn


class PathError(ValueError):
    """A bad import path, a failing callable, or a bad weights file (one line, no traceback)."""


def load_object(spec: str, flag: str = "--model"):
    """The object ``spec`` (``MODULE:ATTRIBUTE``) names, called when it is a function or class.

    Args:
        spec: e.g. ``"mypkg.models:build"``.
        flag: the option it came from, for the message.

    Returns:
        The attribute, or what calling it returned.

    Raises:
        PathError: with one line saying what was wrong.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PathError(f"{flag} {spec!r}: expected MODULE:ATTRIBUTE, e.g. mypkg.models:build.")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise PathError(f"{flag} {spec!r}: no module named {e.name!r} (is its folder the current one, or on "
                            "PYTHONPATH?).") from None
        raise PathError(f"{flag} {spec!r}: importing {module_name} failed: {e}.") from None
    except Exception as e:
        raise PathError(f"{flag} {spec!r}: importing {module_name} failed: {type(e).__name__}: {_line(e)}") from None
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_"))[:8]
            raise PathError(f"{flag} {spec!r}: {module_name} has no attribute {attribute!r} (it has: "
                            f"{', '.join(names) or 'nothing public'}).")
        obj = getattr(obj, part)
    if inspect.isroutine(obj) or inspect.isclass(obj) or isinstance(obj, functools.partial):
        try:
            obj = obj()
        except Exception as e:
            raise PathError(f"{flag} {spec!r}: calling {attribute}() failed: {type(e).__name__}: {_line(e)}") from None
    return obj


def load_model(spec: str, weights: str | None = None) -> nn.Module:
    """The model ``spec`` names, with ``weights`` (a .safetensors file) loaded into it.

    Raises:
        PathError: a bad path, a callable that fails or returns no nn.Module, a weights file
            that is missing, not safetensors, or does not fit the model.
    """
    model = load_object(spec, "--model")
    if not isinstance(model, nn.Module):
        raise PathError(f"--model {spec!r} gave a {type(model).__name__}, not a torch.nn.Module: name a module "
                        "attribute or a function returning the model.")
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise PathError(f"--weights {weights!r}: no such file.")
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as e:
            raise PathError(f"--weights {weights!r}: not a readable .safetensors file ({_line(e)}).") from None
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise PathError(f"--weights {weights!r} does not fit the model: {_line(e)}") from None
    return model


def load_data(spec: str, flag: str = "--data"):
    """The data ``spec`` names (anything a Pruner takes: a DataLoader, a Dataset, ``(x, y)``)."""
    data = load_object(spec, flag)
    if data is None:
        raise PathError(f"{flag} {spec!r} gave None: return the data (a DataLoader, a Dataset or (inputs, targets)).")
    return data


def _line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
