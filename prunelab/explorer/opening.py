"""Opening the explorer: ``prunelab.explore(model_or_demo, val_data, ...)``.

Turns what a person brings (a model and data, a demo's name, a Demo, or a Pruner) into a Pruner
and an :class:`~prunelab.explorer.app.Explorer` on it, with clear errors for anything else.
"""

from __future__ import annotations

import difflib
import inspect

from torch import nn

from .. import demos
from ..pruner import Pruner
from .app import Explorer

# The options explore() passes on: the Pruner's keyword-only arguments, read from its signature.
PRUNER_OPTIONS = [name for name, p in inspect.signature(Pruner).parameters.items() if p.kind == p.KEYWORD_ONLY]


def explore(model_or_demo, val_data=None, train_data=None, *, score_samples: int | None = None,
            **pruner_options) -> Explorer:
    """Open the interactive explorer.

    Args:
        model_or_demo: a ``torch.nn.Module``; a demo name such as ``"digits-mlp"`` (see
            ``prunelab.demos.NAMES``) or a loaded Demo; or an existing Pruner.
        val_data: labelled data to measure on (a DataLoader, a Dataset, or an ``(inputs,
            targets)`` pair of tensors); required for a model, brought along by demos.
        train_data: data for Taylor/attribution scoring and fine-tuning (optional).
        score_samples: how many samples Taylor and attribution scores are computed on, in the
            background with progress shown (a big model scores sooner on fewer); None: up to 2,048.
        **pruner_options: passed to :class:`prunelab.Pruner` (output, label_key, metric, loss,
            eval_samples, batch_size, seed): ``output=`` selects the measured tensor of a model
            that returns several, ``label_key=`` names the labels of dict batches.

    Returns:
        An :class:`Explorer`: an ipywidgets widget that shows itself as a cell's output.

    Example:
        >>> explorer = pl.explore("digits-mlp")
        >>> explorer   # the last line of a cell: the explorer shows itself
        >>> pl.explore(model, val_data, score_samples=256)   # a big model: Taylor scores on 256 samples
    """
    unknown = [k for k in pruner_options if k not in PRUNER_OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], PRUNER_OPTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"explore() got an unknown option {unknown[0]!r}.{hint} "
                        f"Options (passed to the Pruner): {PRUNER_OPTIONS}.")
    image_shape, class_names = None, None
    if isinstance(model_or_demo, str):
        model_or_demo = demos.load(model_or_demo)
    if isinstance(model_or_demo, demos.Demo):
        demo = model_or_demo
        if val_data is not None or train_data is not None:
            raise ValueError(f"the demo {demo.name!r} brings its own data; call explore({demo.name!r}) without "
                             "val_data/train_data, or pass your model with your data.")
        pruner = Pruner(demo.model, demo.val, train_data=demo.train, **pruner_options)
        title, image_shape, class_names = f"{demo.name}: {demo.description}", demo.image_shape, demo.classes
    elif isinstance(model_or_demo, Pruner):
        if val_data is not None or train_data is not None or pruner_options:
            raise ValueError("a Pruner already holds its data and options; call explore(pruner) alone.")
        pruner = model_or_demo
        title = type(pruner.model).__name__
    elif isinstance(model_or_demo, nn.Module):
        if val_data is None:
            raise ValueError("explore(model) needs val_data: labelled data to measure the pruned model on "
                             "(a DataLoader, a Dataset, or an (inputs, targets) pair of tensors). "
                             "Or try a demo: explore('digits-mlp').")
        pruner = Pruner(model_or_demo, val_data, train_data=train_data, **pruner_options)
        title = type(model_or_demo).__name__
    else:
        raise TypeError(f"explore() takes a torch.nn.Module, a demo name (one of {list(demos.NAMES)}), a Demo "
                        f"or a Pruner; got {type(model_or_demo).__name__}.")
    return Explorer(pruner, title=title, image_shape=image_shape, class_names=class_names, score_samples=score_samples)
