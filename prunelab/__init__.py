"""prunelab: explore neural-network pruning interactively.

    import prunelab as pl
    demo = pl.demos.load("digits-mlp")
    pruner = pl.Pruner(demo.model, demo.val, train_data=demo.train)
    pruner.prune(0.9); print(pruner.evaluate())
"""

from . import demos, reports
from ._version import __version__
from .core.criteria import Attribution, Criterion, Magnitude, Random, Taylor, Wanda
from .core.metrics import Metrics
from .core.layers import Layer
from .pruner import Pruner, apply_recipe
from .export import (FORMATS as EXPORT_FORMATS, Exported, compare_formats, load_int8, load_program, load_sparse,
                     load_state_dict, load_structured, measure_latency)
from .recipe import load_recipe, record_recipe, register_step
from .sensitivity import Allocation, SensitivityTable
from .core.tables import Table
from .retrain import FinetuneResult, sparsity_schedule

__all__ = ["Attribution", "Criterion", "Explorer", "Layer", "Magnitude", "Metrics", "Pruner", "Random", "Taylor",
           "Wanda", "__version__", "demos", "explore", "reports"]
__all__ += ["EXPORT_FORMATS", "Exported", "apply_recipe", "compare_formats", "load_int8", "load_program", "load_recipe",
            "load_sparse", "load_state_dict", "load_structured", "measure_latency", "record_recipe",
            "register_step"]
__all__ += ["Allocation", "FinetuneResult", "SensitivityTable", "Table", "sparsity_schedule"]


def __getattr__(name):
    # The explorer pulls in bokeh and ipywidgets: imported on first use, so scripts and the CLI
    # that never open it stay light.
    if name in ("explore", "Explorer"):
        from . import explorer

        return getattr(explorer, name)
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")
