"""One bokeh view per module; each observes the explorer's state and patches its data sources."""
