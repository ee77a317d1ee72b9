"""The interactive explorer: ``prunelab.explore(model, val_data)`` in JupyterLab.

opening.py turns what a person brings into a Pruner and an Explorer; app.py composes and wires;
state.py is the one state hub (traits) that the controls, views and panels observe, and the one
bridge from the Pruner into it; actions.py the typed actions the controls ask for; controls.py
what a person drags and clicks; views/ one bokeh view per file; panels/ the tabs beside them;
background.py the one helper for running work on the kernel's main thread and in the background;
analysis.py the expensive measurements that run there.
"""

from .app import Explorer
from .opening import explore

__all__ = ["Explorer", "explore"]
