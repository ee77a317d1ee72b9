"""What a model is called with, and which of its outputs is measured: the one rule for both.

A model takes either one tensor (``model(x)``) or keyword tensors (``model(**x)``, the Hugging
Face way: ``input_ids``, ``attention_mask``, ``pixel_values``...). :class:`Inputs` holds keyword
tensors that share their first (batch) dimension and slices them together, so the rest of
prunelab can treat a batch of them like a tensor of inputs: ``len``, ``x[:n]``, ``x[index]``,
``x.split(n)``, ``x.to(device)``, :meth:`Inputs.cat`.

:func:`forward` calls the model and selects the tensor prunelab measures: a tensor as it is; a
``ModelOutput`` or a dict, its ``"logits"``; a tuple or list, its first element. ``output=`` (a
key, or a callable taking what the model returned) overrides that; the Pruner keeps it
(``Pruner(model, data, output=...)``) and every place that calls the model goes through here.

Example:
    >>> x = Inputs({"input_ids": torch.zeros(4, 3, dtype=torch.long)})
    >>> len(x), len(x[:2]), [len(b) for b in x.split(3)]
    (4, 2, [3, 1])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Iterator, Sequence, Union

import torch
from torch import nn

from .tracing import TRACING

__all__ = ["Inputs", "call", "forward", "select_output", "concat", "check_output", "check_label_key",
           "plain_example", "OUTPUT_HELP"]

OUTPUT_HELP = ("pass output=... to the Pruner: the key of the tensor to measure (output='logits') or a "
               "function taking what the model returned and giving that tensor (output=lambda out: out[0])")


class Inputs:
    """Keyword tensors for ``model(**inputs)``, batch-aligned: every tensor has the same first
    dimension, and indexing, slicing and splitting apply to all of them together.

    Args:
        tensors: ``{name: tensor}`` (a dict, a Hugging Face ``BatchEncoding``, any mapping), at
            least one, all with the same length along dim 0.

    Raises:
        TypeError: a value that is not a tensor; ValueError: no tensors, or lengths that differ.

    Example:
        >>> x = Inputs({"input_ids": torch.arange(6).view(3, 2), "attention_mask": torch.ones(3, 2)})
        >>> x[1:]["input_ids"].tolist(), sorted(x.keys())
        ([[2, 3], [4, 5]], ['attention_mask', 'input_ids'])
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        tensors = dict(tensors)
        bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TypeError(f"model inputs must be tensors; {bad[0]!r} is a {type(tensors[bad[0]]).__name__}. "
                            "Turn every input into a tensor (a tokenizer: return_tensors='pt').")
        if not tensors:
            raise ValueError("the inputs hold no tensors: give the model at least one (input_ids, pixel_values...).")
        lengths = {k: (len(v) if v.dim() else None) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise ValueError(f"the input tensors must share their first (batch) dimension, got lengths {lengths}.")
        self._tensors = tensors

    # -------------------------------------------------------------- a mapping for model(**x)

    def keys(self):
        """The input names (so ``model(**x)`` and ``dict(x)`` work)."""
        return self._tensors.keys()

    def items(self):
        return self._tensors.items()

    def values(self):
        return self._tensors.values()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __contains__(self, key) -> bool:
        return key in self._tensors

    # -------------------------------------------------------------- a batch, like a tensor

    def __len__(self) -> int:
        """The number of samples (not of keys)."""
        return len(next(iter(self._tensors.values())))

    def __getitem__(self, index):
        """``x["input_ids"]``: that tensor. ``x[2]``: one sample as ``{name: tensor}`` without the
        batch dimension (as a Dataset item). ``x[:n]``, ``x[index tensor or list]``: an Inputs."""
        if isinstance(index, str):
            return self._tensors[index]
        if isinstance(index, int):
            return {k: v[index] for k, v in self._tensors.items()}
        return Inputs({k: v[index] for k, v in self._tensors.items()})

    def split(self, size: int) -> list["Inputs"]:
        """Consecutive batches of at most ``size`` samples (as ``Tensor.split``)."""
        parts = {k: v.split(size) for k, v in self._tensors.items()}
        return [Inputs({k: p[i] for k, p in parts.items()}) for i in range(len(next(iter(parts.values()))))]

    def to(self, *args, **kwargs) -> "Inputs":
        """Every tensor moved (``x.to(device)``): dtype casts apply to floating tensors only, so
        token ids stay integers."""
        def move(v):
            if v.is_floating_point():
                return v.to(*args, **kwargs)
            device = next((a for a in args if isinstance(a, (str, torch.device))), kwargs.get("device"))
            return v if device is None else v.to(device)
        return Inputs({k: move(v) for k, v in self._tensors.items()})

    def clone(self) -> "Inputs":
        return Inputs({k: v.clone() for k, v in self._tensors.items()})

    def cpu(self) -> "Inputs":
        return self.to("cpu")

    @property
    def device(self) -> torch.device:
        return next(iter(self._tensors.values())).device

    @property
    def nbytes(self) -> int:
        """Bytes held by all the tensors."""
        return sum(v.numel() * v.element_size() for v in self._tensors.values())

    @staticmethod
    def cat(parts: Sequence["Inputs"]) -> "Inputs":
        """Batches joined along the batch dimension (every part with the same names and, past
        the batch dimension, the same shapes).

        Raises:
            ValueError: names or shapes that differ (sequences padded to different lengths).
        """
        names = [sorted(p.keys()) for p in parts]
        if any(n != names[0] for n in names):
            raise ValueError(f"batches carry different inputs ({names[0]} and "
                             f"{next(n for n in names if n != names[0])}): every batch needs the same keys.")
        out = {}
        for k in names[0]:
            shapes = {tuple(p[k].shape[1:]) for p in parts}
            if len(shapes) > 1:
                raise ValueError(f"input {k!r} has different shapes in different batches ({sorted(shapes)[:3]}): "
                                 "prunelab keeps the data as one batch, so pad every sequence to one length "
                                 "(a tokenizer: padding='max_length', max_length=...).")
            out[k] = torch.cat([p[k] for p in parts])
        return Inputs(out)

    def describe(self) -> str:
        """The names, shapes (past the batch) and dtypes, for messages."""
        return ", ".join(f"{k} {tuple(v.shape[1:])} {str(v.dtype).replace('torch.', '')}"
                         for k, v in self._tensors.items())

    def __repr__(self) -> str:
        return f"Inputs({len(self)} samples: {self.describe()})"


Batch = Union[torch.Tensor, Inputs]


def concat(parts: Sequence[Batch]) -> Batch:
    """Batches of inputs (tensors or :class:`Inputs`) joined along the batch dimension.

    Example:
        >>> concat([torch.zeros(2, 3), torch.ones(1, 3)]).shape
        torch.Size([3, 3])
    """
    if parts and isinstance(parts[0], Inputs):
        return Inputs.cat(parts)
    return torch.cat(list(parts))


def call(model: nn.Module, x: Batch):
    """What ``model`` returns for ``x``: ``model(**x)`` for :class:`Inputs` (or a dict), else
    ``model(x)``; nothing is selected (see :func:`forward`).

    Example:
        >>> call(nn.Identity(), torch.ones(1)).tolist()
        [1.0]
    """
    with TRACING.shared():  # no fx trace on another thread meanwhile (core/tracing.py)
        return model(**x) if isinstance(x, (Inputs, Mapping)) else model(x)


def _keys(out) -> list[str]:
    try:
        return [str(k) for k in out.keys()]
    except Exception:
        return []


def select_output(out, output: str | Callable | None = None) -> torch.Tensor:
    """The tensor to measure in what a model returned.

    Args:
        out: the model's return value.
        output: None (a tensor as it is; a ModelOutput or dict: its ``"logits"``; a tuple or
            list: its first element), a key of ``out`` (for a ModelOutput also an attribute), or
            a callable ``f(out) -> tensor``.

    Returns:
        A tensor.

    Raises:
        TypeError: when nothing fits; the message names the type and keys of ``out`` and says to
            pass ``output=...``.

    Example:
        >>> select_output({"logits": torch.zeros(2, 3), "hidden": torch.ones(2)}).shape
        torch.Size([2, 3])
    """
    if callable(output):
        got = output(out)
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"output={getattr(output, '__name__', 'the function')} returned "
                            f"{type(got).__name__}, not a tensor; make it return the tensor to measure.")
        return got
    if output is not None:
        if not isinstance(output, str):
            raise TypeError(f"output= takes a key (str) or a function, not {type(output).__name__}.")
        if isinstance(out, Mapping) and output in out:
            got = out[output]
        elif not isinstance(out, Mapping) and isinstance(getattr(out, output, None), torch.Tensor):
            got = getattr(out, output)
        else:
            keys = _keys(out)
            raise TypeError(f"output={output!r}: the model returned a {type(out).__name__} without that key"
                            f"{' (its keys: ' + ', '.join(keys) + ')' if keys else ''}; {OUTPUT_HELP}.")
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"output={output!r} is a {type(got).__name__}, not a tensor; {OUTPUT_HELP}.")
        return got
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    keys = _keys(out)
    what = f"a {type(out).__name__}" + (f" with keys {', '.join(keys)}" if keys else "")
    raise TypeError(f"the model returned {what}, and prunelab does not know which tensor to measure "
                    f"(it takes a tensor, the 'logits' of a ModelOutput or dict, or the first of a tuple); "
                    f"{OUTPUT_HELP}.")


def forward(model: nn.Module, x: Batch, output: str | Callable | None = None) -> torch.Tensor:
    """``model`` called on ``x`` (``model(**x)`` for :class:`Inputs`, else ``model(x)``) and its
    measured tensor selected (:func:`select_output`).

    Args:
        model: the model.
        x: a tensor of inputs, or Inputs.
        output: the selector, as :func:`select_output` takes it.

    Returns:
        The output tensor.

    Example:
        >>> forward(nn.Linear(3, 2), torch.zeros(4, 3)).shape
        torch.Size([4, 2])
    """
    return select_output(call(model, x), output)


def check_output(output) -> None:
    """A TypeError unless ``output`` is None, a str key or a callable (the Pruner's ``output=``).

    Example:
        >>> check_output("logits")
    """
    if output is not None and not isinstance(output, str) and not callable(output):
        raise TypeError(f"output= takes None, a key (str) such as 'logits', or a function f(model output) -> "
                        f"tensor; got {type(output).__name__}.")


def check_label_key(label_key) -> str:
    """``label_key`` if it is a non-empty str (where dict batches keep their labels), else a TypeError.

    Example:
        >>> check_label_key("label")
        'label'
    """
    if not isinstance(label_key, str) or not label_key:
        raise TypeError(f"label_key= names the key of the labels in dict batches (default 'labels'); got "
                        f"{label_key!r}.")
    return label_key


def plain_example(x: Batch):
    """``x`` as torch-pruning and ``torch.export`` take example inputs: Inputs as a plain dict
    (they call ``model(**example)``), a tensor as it is.

    Example:
        >>> type(plain_example(Inputs({"a": torch.zeros(1)}))).__name__
        'dict'
    """
    return dict(x) if isinstance(x, Inputs) else x
