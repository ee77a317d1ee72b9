"""How wide the views draw: their bokeh figures stretch to the width their tab gets (they reflow
with the output area: see ``explorer.app.reflowing``), up to ``MAX_WIDTH`` px, past which wider
plots only spread the same data thinner."""

MAX_WIDTH = 1400
