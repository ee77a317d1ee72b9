"""Exporting a pruned model: smaller files, a faster network, and files that load anywhere.

``pruner.export(path, format=...)`` writes one of:

=============  ==============================================  ======================  =========
format         what                                            load with               gives
=============  ==============================================  ======================  =========
"state_dict"   masked weights, original architecture           ``load_state_dict``     nothing
"sparse"       bitmask + nonzero values                        ``load_sparse``         size
"structured"   units removed: .safetensors + .pt2 program      ``load_structured``     size+speed
"onnx"         the (structured, if possible) network in ONNX   onnxruntime             size+speed
"recipe"       JSON of what was done                           ``apply_recipe``        replay
=============  ==============================================  ======================  =========

All files are written all-or-nothing and loaded without pickle.
"""

from .formats import FORMATS, GIVES, SUFFIXES, Exported, export
from .latency import Latency, measure_latency
from .program import load_program
from .report import FormatReport, compare_formats
from .sparse import load_sparse
from .state_dict import load_state_dict
from .structured import load_structured, shrink

__all__ = ["Exported", "FORMATS", "FormatReport", "GIVES", "Latency", "compare_formats", "export",
           "load_program", "load_sparse", "load_state_dict", "load_structured", "measure_latency", "shrink"]
