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
"int8"         int8 weights (after the structured cut, if any)  ``load_int8``           size(+speed)
=============  ==============================================  ======================  =========

All files are written all-or-nothing and loaded without pickle.
"""

from .formats import FORMATS, GIVES, SUFFIXES, Exported, export
from .int8 import int8_model, load_int8
from .latency import CURVE_RATIOS, Latency, latency_curve, measure_latency, structured_latency
from .program import load_program
from .report import FormatReport, compare_formats
from .sparse import load_sparse
from .state_dict import load_state_dict
from .structured import load_structured, shrink

__all__ = ["Exported", "FORMATS", "FormatReport", "GIVES", "Latency", "compare_formats", "export", "int8_model",
           "latency_curve", "load_int8", "load_program", "structured_latency", "load_sparse", "load_state_dict", "load_structured", "measure_latency", "shrink"]
