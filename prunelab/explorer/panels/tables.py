"""The Tables panel: pick one of the tables people publish about pruning, measure it in the
background (progress, cancel), and take it away as markdown or CSV.

The report is prepared on the kernel's main thread (a copy of the Pruner's state is taken there)
and measured on a worker thread on that copy (:class:`prunelab.reports.ReportJob`), so sliders
moved meanwhile change nothing in the table, and the Pruner is never changed by it.
"""

from __future__ import annotations

import html
import urllib.parse

import ipywidgets as widgets

from ...reports import DESCRIPTIONS, KINDS, ReportJob
from .base import Panel
from .runner import BackgroundRun


class TablesPanel(Panel):
    """Measure a report table of ``pruner`` in the background and show it.

    Args:
        pruner: the Pruner (never modified).
        state: the explorer's state hub (default: the panel's own, following ``pruner``).
        post: runs work on the kernel's main thread (default: the panel's own Scheduler).
        options: ``{kind: {option: value}}`` passed to each report (e.g. smaller settings).

    Returns:
        The panel (an ipywidgets widget, class ``prunelab-tables``).

    Example:
        >>> panel = TablesPanel(pruner)
        >>> panel.kind.value = "layers"; panel.measure(); panel.wait()
        >>> print(panel.table.to_markdown())
    """

    title = "Tables"

    def __init__(self, pruner, state=None, post=None, *, options: dict | None = None):
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.table = None
        self._markdown_text = ""
        super().__init__(pruner, state, post)
        for widget, name in ((self.kind, "kind"), (self.measure_button, "measure"), (self.progress, "progress"),
                             (self.cancel_button, "cancel"), (self.status, "status"), (self.output, "table"),
                             (self.markdown, "markdown"), (self.csv_link, "csv"), (self.stale, "stale"),
                             (self.about, "about")):
            widget.add_class(f"prunelab-tables-{name}")

    def build(self) -> list[widgets.Widget]:
        """The kind, the measure button, progress and cancel, the table, its markdown and CSV."""
        self.runner = BackgroundRun(self.post)
        self.progress, self.status, self.cancel_button = self.runner.progress, self.runner.status, \
            self.runner.cancel_button
        self.kind = widgets.Dropdown(options=list(KINDS), value="sparsity", description="Table",
                                     layout=widgets.Layout(width="260px"))
        self.about = widgets.HTML(self._about("sparsity"))
        self.measure_button = widgets.Button(description="Measure", icon="table", button_style="primary",
                                             tooltip="measure this table now, on a copy of the model as it is")
        self.output = widgets.HTML("<i>Pick a table and press <b>Measure</b>.</i>")
        self.stale = widgets.HTML()
        self.markdown = widgets.Textarea(value="", description="Markdown", placeholder="the table, to copy",
                                         layout=widgets.Layout(width="95%", height="140px"))
        self.csv_link = widgets.HTML()
        self.kind.observe(lambda change: setattr(self.about, "value", self._about(change["new"])), names="value")
        self.markdown.observe(self._keep_markdown, names="value")  # read-only: an edit is put back
        self.measure_button.on_click(lambda _: self.post("tables:measure", self.measure))
        self.runner.on_busy(lambda: setattr(self.measure_button, "disabled", self.runner.busy))
        self.watch(self._on_pruner_change, "revision")
        row = lambda *c: widgets.HBox(list(c), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        return [widgets.HTML("<b>Tables</b>"), row(self.kind, self.measure_button), self.about,
                row(self.progress, self.cancel_button, self.status), self.stale, self.output, self.markdown,
                self.csv_link]

    # ------------------------------------------------------------------ actions

    def measure(self) -> None:
        """Start measuring the chosen table (on the main thread: the copy is taken here; the work
        then runs in the background). The status line says when it is done, failed or cancelled."""
        kind = self.kind.value
        try:
            self.runner.check_idle()
            job = ReportJob(self.pruner, kind, **self.options.get(kind, {})).prepare()
        except Exception as e:  # shown in the panel: a callback's exception would be invisible
            self.runner.say(f"{type(e).__name__}: {e}", error=True)
            return
        self.runner.start(f"measuring {kind}", lambda hooks, send: job.run(hooks), self._show, 1)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the measurement finishes and show it (scripts and tests)."""
        return self.runner.wait(timeout)

    def cancel(self) -> None:
        """Stop the measurement at its next point."""
        self.runner.cancel()

    # ------------------------------------------------------------------ showing

    def _show(self, table) -> str:
        self.table = table
        self.output.value = table._repr_html_()
        self._markdown_text = table.to_markdown()
        self.markdown.value = self._markdown_text
        name = f"prunelab-{self.kind.value}.csv"
        data = "data:text/csv;charset=utf-8," + urllib.parse.quote(table.to_csv())
        self.csv_link.value = (f"<a class='prunelab-tables-download' download='{html.escape(name)}' "
                               f"href='{data}'>Download CSV ({html.escape(name)})</a>")
        self.stale.value = ""
        return f"{table.title or 'table'}: {len(table)} rows measured"

    def _keep_markdown(self, change) -> None:
        if change["new"] != self._markdown_text:
            self.markdown.value = self._markdown_text

    def _on_pruner_change(self, _change) -> None:
        if self.table is not None:
            self.stale.value = ("<span style='color:#b60'>The pruning changed since this table was measured; press "
                                "<b>Measure</b> for the current state.</span>")

    def _about(self, kind: str) -> str:
        return f"<span style='color:#555'>{html.escape(DESCRIPTIONS[kind])}.</span>"
