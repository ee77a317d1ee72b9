"""Every format side by side for the current state: real file sizes and measured latency.

Files are written to a temporary folder (removed afterwards) and their bytes counted; latency is
measured for the masked dense network (what "state_dict" and "sparse" load back to), the
structured one and, for "int8", the int8 networks as :func:`prunelab.load_int8` gives them back
(rows "int8" on the masked network and "structured+int8" on the cut one), interleaved on the
same batch; their accuracy is measured on the validation data. The sentence says plainly which formats give
speed and which only size, with the numbers measured here.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.metrics import model_accuracy
from .formats import FORMATS, GIVES, SUFFIXES, export
from .int8 import int8_model, save_int8
from .latency import Latency, measure_latency
from .structured import shrink

INT8_ROWS = ("int8", "structured+int8")
SHRINKING = ("structured", "structured .pt2", "onnx")  # the rows whose gain is the units removed


@dataclass(frozen=True)
class FormatRow:
    format: str
    bytes: int | None
    gives: str
    error: str | None = None
    accuracy: float | None = None   # measured on the validation data (the int8 rows)
    latency: Latency | None = None  # measured beside dense (the int8 rows)


@dataclass(frozen=True)
class FormatReport:
    """Sizes of every format and dense vs structured latency, measured for one Pruner state."""

    rows: tuple[FormatRow, ...]
    dense: Latency
    structured: Latency | None
    units_removed: int
    flops_ratio: float
    structured_error: str | None = None
    overall_sparsity: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)
    accuracy: dict = field(default_factory=dict)  # {"dense (masked)": ..., "structured": ...}: measured

    @property
    def dense_bytes(self) -> int | None:
        return next((r.bytes for r in self.rows if r.format == "state_dict"), None)

    @property
    def speedup(self) -> float | None:
        return self.dense.median / self.structured.median if self.structured else None

    def share(self, row: FormatRow) -> float | None:
        """The row's size as a fraction of the dense ("state_dict") file."""
        dense = self.dense_bytes
        return row.bytes / dense if row.bytes is not None and dense else None

    def sentence(self) -> str:
        """Which formats give speed and which only size, in plain words with the measured numbers."""
        parts = []
        sparse = next((r for r in self.rows if r.format == "sparse" and r.bytes is not None), None)
        size = f" ({self.share(sparse):.0%} of the dense file)" if sparse and self.share(sparse) else ""
        lat = self.dense
        where = f"batch {lat.batch}, {lat.threads} thread{'s' * (lat.threads != 1)}, median of {lat.repeats}"
        if self.structured is None:
            parts.append(f"Structured export is not possible for this state: {self.structured_error} "
                         f"No format makes this model faster; 'sparse' makes the file smaller{size}.")
        elif self.units_removed == 0:
            parts.append("No units are removed in this state (none pruned structurally, none all zero), so no "
                         f"format makes the model faster; 'sparse' makes the file smaller{size} but loads back to "
                         "dense shapes. Prune with granularity='structured' to gain speed.")
        else:
            parts.append(f"Speed: only 'structured' (and 'onnx', which carries the same smaller network) run "
                         f"faster: {self.units_removed} units removed, measured {self.speedup:.2f}x faster than "
                         f"dense ({lat.median * 1e3:.2f} ms vs {self.structured.median * 1e3:.2f} ms; {where}) "
                         f"for {self.flops_ratio:.2f}x fewer FLOPs.")
            parts.append(f"Size only: 'sparse'{size} loads back to dense shapes and runs at dense speed.")
        for r in self.rows:
            if r.accuracy is not None and r.latency is not None:
                base = self.accuracy.get("structured" if r.format.startswith("structured") else "dense (masked)")
                share = self.share(r)
                parts.append(f"'{r.format}': {r.bytes / 1e3:,.1f} kB" + (f" ({share:.0%} of the dense file)" if share
                             else "") + f", accuracy {r.accuracy:.2%}" + (f" (float: {base:.2%})" if base is not None
                             else "") + f", {r.latency.median * 1e3:.3f} ms vs dense {lat.median * 1e3:.3f} ms.")
        parts.append("'state_dict' is the dense file with zeros in it: neither smaller nor faster. "
                     "'recipe' holds no weights.")
        return " ".join(parts)

    def gives(self, row: FormatRow) -> str:
        """What ``row``'s format gives in the state measured, worded from this report's own numbers: a
        structured (or ONNX) file gains only when whole units were removed.

        Example:
            >>> report.gives(report.rows[2])   # an unstructured state
            'nothing to remove: no whole unit is pruned (same size and speed as dense)'
        """
        if row.error:
            return f"failed: {row.error}"
        if row.format not in SHRINKING:
            return row.gives
        if self.structured is None:
            return f"not possible for this state: {self.structured_error or 'no structured network'}"
        if self.units_removed == 0:
            return "nothing to remove: no whole unit is pruned (same size and speed as dense)"
        share = self.share(row)
        size = f"{share:.0%} of the dense size" if share is not None and row.format != "structured .pt2" else "smaller"
        return (f"{self.units_removed} units removed: {size}, measured {self.speedup:.2f}x the dense speed "
                f"({self.flops_ratio:.2f}x fewer FLOPs)")

    def table(self) -> str:
        """A markdown table of the formats."""
        lines = ["| Format | File size | vs dense | Accuracy | Latency | Gives |", "|---|---:|---:|---:|---:|---|"]
        for r in self.rows:
            if r.error:
                lines.append(f"| {r.format} | - | - | - | - | failed: {r.error} |")
                continue
            share = self.share(r)
            acc = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
            lat = "-" if r.latency is None else f"{r.latency.median * 1e3:.3f} ms"
            lines.append(f"| {r.format} | {r.bytes / 1e3:,.1f} kB | {'-' if share is None else f'{share:.0%}'} "
                         f"| {acc} | {lat} | {self.gives(r)} |")
        lines.append("")
        lines.append(f"Latency, dense: {self.dense}")
        lines.append(f"Latency, structured: {self.structured if self.structured else 'n/a'}")
        lines += [f"Accuracy, {k}: {v:.2%}" for k, v in self.accuracy.items()]
        return "\n".join(lines)

    def html(self, sentence: bool = True) -> str:
        """The table (and, unless ``sentence=False``, the plain sentence) as HTML: each "Gives" cell worded
        from the measurement (:meth:`gives`); rows measured as networks of their own (int8,
        structured+int8) show their accuracy and latency."""
        right = "<td style='text-align:right'>"
        cells = []
        for r in self.rows:
            share = self.share(r)
            size = "-" if r.bytes is None else f"{r.bytes / 1e3:,.1f} kB"
            rel = "-" if share is None else f"{share:.0%}"
            acc = "-" if r.accuracy is None else f"{r.accuracy:.2%}"
            lat = "-" if r.latency is None else f"{r.latency.median * 1e3:.3f} ms"
            cells.append(f"<tr><td>{html.escape(r.format)}</td>{right}{size}</td>{right}{rel}</td>{right}{acc}</td>"
                         f"{right}{lat}</td><td>{html.escape(self.gives(r))}</td></tr>")
        structured = f"{self.structured.median * 1e3:.2f} ms" if self.structured else "n/a"
        lat = (f"<tr><td>dense</td>{right}{self.dense.median * 1e3:.2f} ms</td></tr>"
               f"<tr><td>structured</td>{right}{structured}</td></tr>")
        accuracy = "".join(f"<tr><td>{html.escape(k)}</td>{right}{v:.2%}</td></tr>" for k, v in self.accuracy.items())
        return ("<table><tr><th>Format</th><th>File size</th><th>vs dense</th><th>Accuracy</th><th>Latency</th>"
                "<th>Gives (measured here)</th></tr>" + "".join(cells) + "</table>"
                + "<table><tr><th>Latency</th><th>median</th></tr>" + lat + "</table>"
                + (f"<table><tr><th>Accuracy</th><th>float</th></tr>{accuracy}</table>" if accuracy else "")
                + (f"<p>{html.escape(self.sentence())}</p>" if sentence else ""))


def compare_formats(pruner, *, formats=None, batch: int = 256, threads: int = 1, repeats: int = 20,
                    directory=None) -> FormatReport:
    """Export ``pruner``'s current state in every format, measure each file, and time dense vs
    structured on ``batch`` validation samples.

    Args:
        pruner: the Pruner.
        formats: the formats to write (default: all of :data:`FORMATS`).
        batch, threads, repeats: the latency measurement (see :func:`measure_latency`).
        directory: keep the files there as ``model-<format><suffix>`` (default: a temporary folder,
            removed after).

    Returns:
        A :class:`FormatReport`: one row per file (a failed format has its error instead of a
        size), the dense and structured latencies, and the units removed.

    Example:
        >>> print(pl.compare_formats(pruner).sentence())
    """
    formats = tuple(formats or FORMATS)
    rows = []
    int8_models = {}
    with tempfile.TemporaryDirectory(prefix="prunelab-export-") as tmp:
        folder = Path(directory) if directory is not None else Path(tmp)
        for fmt in formats:
            if fmt == "int8":
                rows += _int8_rows(pruner, folder, int8_models)
                continue
            try:
                done = export(pruner, folder / f"model-{fmt}{SUFFIXES[fmt]}", fmt)
                if fmt == "structured":  # weights to rebuild, and the class-free program beside them
                    weights, program = done.files
                    rows.append(FormatRow(fmt, weights.stat().st_size, GIVES[fmt]))
                    rows.append(FormatRow("structured .pt2", program.stat().st_size,
                                          "the same network as a torch.export program (graph + weights), "
                                          "loads without your class"))
                else:
                    rows.append(FormatRow(fmt, done.bytes, GIVES[fmt]))
            except (ValueError, ImportError, OSError, RuntimeError) as e:
                rows.append(FormatRow(fmt, None, GIVES[fmt], str(e).split(". ")[0]))
    x = pruner.val_inputs[:batch]
    try:
        shrunk = shrink(pruner)
        error = None
    except ValueError as e:
        shrunk, error = None, str(e)
    models = {"dense": pruner.model}
    if shrunk is not None:
        models["structured"] = shrunk.model
    models.update(int8_models)
    times = measure_latency(models, x, threads=threads, repeats=repeats)
    rows = [replace(r, accuracy=model_accuracy(int8_models[r.format], pruner), latency=times[r.format])
            if r.format in int8_models else r for r in rows]
    accuracy = {"dense (masked)": pruner.evaluate().accuracy}
    if shrunk is not None:
        accuracy["structured"] = model_accuracy(shrunk.model, pruner)
    return FormatReport(tuple(rows), times["dense"], times.get("structured"),
                        shrunk.removed if shrunk else 0, shrunk.flops_ratio if shrunk else 1.0, error,
                        pruner.overall_sparsity(), accuracy=accuracy)


def _int8_rows(pruner, folder: Path, models: dict) -> list[FormatRow]:
    """Rows "int8" (the masked network) and, when units are removed, "structured+int8" (the cut
    one): the real file of each, and the network it loads back to in ``models`` for timing."""
    rows = []
    for label, cut in (("int8", False), ("structured+int8", True)):
        try:
            name = "model-int8.structured.safetensors" if cut else f"model-int8{SUFFIXES['int8']}"
            path, details = save_int8(pruner, folder / name, structured=cut)
            if cut and not details["units_removed"]:
                path.unlink()
                continue  # nothing to cut: "int8" is the row
            source = shrink(pruner).model if cut else pruner.model
            model, why = int8_model(source)
            if model is None:
                raise RuntimeError(why)
            models[label] = model
            gives = ("int8 weights of the cut network: smaller still, and faster where units were removed" if cut
                     else "int8 weights of the masked network: a quarter of the float size; int8 Linear layers")
            rows.append(FormatRow(label, path.stat().st_size, gives))
        except (ValueError, ImportError, OSError, RuntimeError) as e:
            rows.append(FormatRow(label, None, GIVES["int8"], str(e).split(". ")[0]))
    return rows
