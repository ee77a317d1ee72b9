"""The interactive explorer: ``prunelab.explore(model, val_data)`` in JupyterLab.

app.py composes and wires; controls.py holds what a person drags and clicks; views/ has one
bokeh view per file; state.py is the observable state the views follow; analysis.py and
background.py keep the expensive work off the main thread.
"""

from .app import Explorer, explore

__all__ = ["Explorer", "explore"]
