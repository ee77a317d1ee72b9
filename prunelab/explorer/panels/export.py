"""The Export panel: write the pruned model in any format, and see what each format buys.

Measuring every format takes seconds (the ONNX and torch.export tracers dominate), so it runs on
demand and the table says when the pruning has moved on since. Work runs on the kernel's main
thread on purpose: export reads the model's weights, and a slider moved meanwhile would change
them halfway through.
"""

from __future__ import annotations

import html
from pathlib import Path

import ipywidgets as widgets

from ...export import FORMATS, GIVES, compare_formats
from ...export.report import SHRINKING
from .base import Panel

ENDINGS = {"state_dict": ".safetensors", "sparse": ".sparse.safetensors", "structured": ".structured",
           "onnx": ".onnx", "recipe": ".recipe.json", "int8": ".int8.safetensors"}
LABELS = {"state_dict": "state_dict (dense, masks baked in)", "sparse": "sparse (bitmask + values: smaller)",
          "structured": "structured (units removed: smaller and faster)", "onnx": "ONNX (checked with onnxruntime)",
          "recipe": "recipe (JSON of what was done)", "int8": "int8 (int8 weights; structured cut first)"}


class ExportPanel(Panel):
    """Export ``pruner``'s current state, and compare every format's file size and the measured
    dense vs structured latency.

    Args:
        pruner: the Pruner whose state is exported (never modified).
        state: the explorer's state hub (default: the panel's own, following ``pruner``).
        post: runs work on the kernel's main thread (default: the panel's own Scheduler).
        directory: where the default file names point.
        stem: the default file name without its ending.
        formats: the formats measured in the table (default: all).
        measure: measure the table at once instead of on the button.

    Returns:
        The panel (an ipywidgets widget, class ``prunelab-export``).

    Example:
        >>> panel = ExportPanel(pruner, directory="out")
        >>> panel.format.value = "structured"
        >>> panel.export_button.click()   # writes out/pruned-model.structured(.safetensors, .pt2)
    """

    title = "Export"

    def __init__(self, pruner, state=None, post=None, *, directory=".", stem: str = "pruned-model",
                 formats=FORMATS, measure: bool = False):
        self.directory = Path(directory)
        self.stem = stem
        self.formats = tuple(formats)
        self.report = None
        self.last_export = None
        super().__init__(pruner, state, post)
        # Stable classes for tests and for users' styling, as the explorer's controls have.
        for widget, name in ((self.format, "format"), (self.path, "path"), (self.export_button, "button"),
                             (self.status, "status"), (self.table, "table")):
            widget.add_class(f"prunelab-export-{name}")
        if measure:
            self.measure()

    def build(self) -> list[widgets.Widget]:
        """The format, path, buttons, status and the table of formats."""
        stem = self.stem
        self.format = widgets.Dropdown(options=[(LABELS[f], f) for f in FORMATS], value="sparse",
                                       description="Format", layout=widgets.Layout(width="420px"))
        self.path = widgets.Text(value=str(self.directory / f"{stem}{ENDINGS['sparse']}"), description="Path",
                                 layout=widgets.Layout(width="420px"))
        self.gives = widgets.HTML(self._gives_html("sparse"))
        self.export_button = widgets.Button(description="Export", icon="download", button_style="primary")
        self.status = widgets.HTML()
        self.measure_button = widgets.Button(description="Measure all formats", icon="tachometer",
                                             layout=widgets.Layout(width="170px"),  # its label whole
                                             tooltip="write every format to a temporary folder, count the bytes, "
                                                     "time dense vs structured")
        self.table = widgets.HTML("<i>Press <b>Measure all formats</b> to see each format's real file size and "
                                  "the measured speed of dense vs structured for this state.</i>")
        self.summary = widgets.HTML()
        self.stale = widgets.HTML()
        self.format.observe(self._on_format, names="value")
        # Clicks arrive on a kernel subshell thread; export and measure read the model, so they
        # run on the main thread, never beside a slider move.
        self.export_button.on_click(lambda _: self.post("export", self.export))
        self.measure_button.on_click(lambda _: self.post("measure", self.measure))
        self.watch(self._on_pruner_change, "revision")
        return [
            widgets.HTML("<b>Export</b>"), self.format, self.path, self.gives,
            widgets.HBox([self.export_button, self.measure_button]), self.status, self.stale, self.table,
            self.summary,
        ]

    # ------------------------------------------------------------------ actions

    def export(self):
        """Export in the chosen format to the chosen path; the status line says what happened.

        Returns:
            The :class:`prunelab.Exported` written, or None when it failed (the status says why).

        Example:
            >>> panel.format.value = "onnx"; panel.export().format
            'onnx'
        """
        fmt, path = self.format.value, self.path.value.strip()
        if not path:
            self._status("Give a file path to export to.", error=True)
            return None
        self.export_button.disabled = True
        self._status(f"Exporting {fmt}…")
        try:
            done = self.pruner.export(Path(path).expanduser(), fmt)
        except Exception as e:  # shown in the panel: a callback's exception would be invisible
            self._status(f"{type(e).__name__}: {e}", error=True)
            return None
        finally:
            self.export_button.disabled = False
        self.last_export = done
        files = ", ".join(f"{html.escape(str(f))} ({f.stat().st_size / 1e3:,.1f} kB)" for f in done.files)
        extra = ""
        if "max_abs_diff" in done.details:
            extra = (f" Outputs checked on {done.details.get('checked')} validation samples: max difference "
                     f"{done.details['max_abs_diff']:.2g} from the masked model.")
        self._status(f"Wrote {files}.{html.escape(extra)}")
        return done

    def measure(self):
        """Write every format to a temporary folder and time dense vs structured; fill the table.

        Returns:
            The ``compare_formats`` report, or None when it failed (the table says why).

        Example: ``print(panel.measure().sentence())``.
        """
        self.measure_button.disabled = True
        self.table.value = "<i>Measuring: writing every format and timing dense vs structured…</i>"
        try:
            self.report = compare_formats(self.pruner, formats=self.formats)
        except Exception as e:
            self.table.value = f"<span style='color:#b00'>{html.escape(f'{type(e).__name__}: {e}')}</span>"
            self.summary.value = ""
            return None
        finally:
            self.measure_button.disabled = False
        self.table.value = self.report.html(sentence=False)
        self.summary.value = f"<p>{html.escape(self.report.sentence())}</p>"
        self.stale.value = ""
        return self.report

    # ------------------------------------------------------------------ reactions

    def _on_format(self, change):
        old, new = change["old"], change["new"]
        p = Path(self.path.value)
        if p.name == f"{self.stem}{ENDINGS[old]}":  # still the default name: follow the format
            self.path.value = str(p.with_name(f"{self.stem}{ENDINGS[new]}"))
        self.gives.value = self._gives_html(new)

    def _on_pruner_change(self, _change):
        self.gives.value = self._gives_html(self.format.value)
        if self.report is not None:
            self.stale.value = ("<span style='color:#b60'>The pruning changed since this table was measured; press "
                                "<b>Measure all formats</b> for the current state.</span>")

    def _gives_html(self, fmt: str) -> str:
        """What ``fmt`` gives, for the state as it is: a shrinking format gains nothing until some
        unit is pruned whole (the measured table says by how much once it is)."""
        gives = GIVES[fmt]
        if fmt in SHRINKING and not any(p.granularity == "structured" for p in self.pruner.plans.values()):
            gives = ("nothing now: no unit is pruned whole, so the network keeps its dense shape, size and latency "
                     "(granularity 'structured' removes units)")
        return f"<span style='color:#555'>Gives: {html.escape(gives)}.</span>"

    def _status(self, text: str, error: bool = False):
        colour = "#b00" if error else "#060"
        self.status.value = f"<span style='color:{colour}'>{text if not error else html.escape(text)}</span>"
