"""A small results table: rows of named values that print as text, render as HTML in notebooks,
and convert to plain Python (or to pandas, when it is installed) for further work."""

from __future__ import annotations

import csv
import html
import io
from typing import Callable, Iterator, Mapping, Sequence


class Table:
    """Rows (dicts with the same keys) with per-column formatting.

    ``formats`` maps a column to a function that turns a value into display text; columns
    without one use ``str``. The values themselves stay numbers. ``headers`` maps a column to the
    heading shown in markdown and HTML (the keys of ``.rows``, CSV and JSON stay the column names);
    ``note`` is a line printed under the table (what was measured, on what).
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Mapping] = (), *,
                 formats: Mapping[str, Callable[[object], str]] | None = None, title: str = "",
                 headers: Mapping[str, str] | None = None, note: str = ""):
        self.columns = list(columns)
        self.formats = dict(formats or {})
        self.title = title
        self.headers = dict(headers or {})
        self.note = note
        self._rows: list[dict] = []
        for row in rows:
            self.append(row)

    def append(self, row: Mapping) -> None:
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise ValueError(f"row lacks columns {missing}; a row needs {self.columns}.")
        self._rows.append({c: row[c] for c in self.columns})

    @property
    def rows(self) -> list[dict]:
        """The rows as dicts (copies)."""
        return [dict(r) for r in self._rows]

    def column(self, name: str) -> list:
        if name not in self.columns:
            raise KeyError(f"no column {name!r}; columns: {self.columns}")
        return [r[name] for r in self._rows]

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.rows)

    def __getitem__(self, i):
        """Row ``i`` as a dict, or a list of rows for a slice."""
        if isinstance(i, slice):
            return [dict(r) for r in self._rows[i]]
        return dict(self._rows[i])

    def to_pandas(self):
        """A pandas DataFrame of the rows (needs pandas, which prunelab does not depend on)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas (pip install pandas); .rows gives plain dicts.") from None
        return pd.DataFrame(self._rows, columns=self.columns)

    def to_csv(self) -> str:
        """The rows as CSV text: a header of column names, then the raw values (numbers unformatted)."""
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        return out.getvalue()

    def to_markdown(self, *, title: bool = True, note: bool = True) -> str:
        """A Markdown table with the formatted values (``str(table)`` is the same).

        Args:
            title: put the title first (when there is one). note: put the note last.

        Example:
            >>> print(Table(["a"], [{"a": 1}]).to_markdown())
            | a |
            |---:|
            | 1 |
        """
        head = "| " + " | ".join(self._heading(c) for c in self.columns) + " |"
        rule = "|" + "|".join("---:" for _ in self.columns) + "|"
        body = ["| " + " | ".join(self._text(c, r[c]) for c in self.columns) + " |" for r in self._rows]
        lines = ([self.title, ""] if title and self.title else []) + [head, rule] + body
        return "\n".join(lines + (["", self.note] if note and self.note else []))

    def _heading(self, column: str) -> str:
        return self.headers.get(column, column)

    def _text(self, column: str, value) -> str:
        return "" if value is None else self.formats.get(column, str)(value)

    def __str__(self) -> str:
        """A Markdown table."""
        return self.to_markdown()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} rows)\n{self}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(self._heading(c))}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._text(c, r[c]))}</td>" for c in self.columns)
                       + "</tr>" for r in self._rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{note}"


def percent(digits: int = 1) -> Callable[[object], str]:
    return lambda v: "" if v is None else f"{v:.{digits}%}"


def points(change) -> str:
    """An accuracy change in percentage points: THE one format for accuracy changes and drops,
    in the explorer's readout, its panels and every table prunelab prints (negative: lost).

    Args:
        change: accuracy after minus accuracy before, as a fraction (-0.289: 28.9 points lost).

    Returns:
        The text, e.g. ``'-28.9 pts'`` ("" for None).

    Example:
        >>> points(-0.289)
        '-28.9 pts'
    """
    return "" if change is None else f"{100 * change:+.1f} pts"


def signed_points(drop) -> str:
    """A drop (accuracy lost; positive is worse) in the one format of :func:`points`, as the change
    it is: a drop of 0.6 reads ``'-60.0 pts'``, as the explorer's readout would say it.

    Args:
        drop: accuracy before minus accuracy after, as a fraction.

    Returns:
        The text ("" for None). Example: ``signed_points(0.289)`` gives ``'-28.9 pts'``.
    """
    return "" if drop is None else points(0.0 - drop)


def count(v) -> str:
    return f"{v:,}"


def seconds(v) -> str:
    return f"{v:.1f} s"


def fixed(digits: int = 2, unit: str = "") -> Callable[[object], str]:
    """A number with ``digits`` decimals and an optional unit: ``fixed(2, " MB")(1.5)`` gives ``'1.50 MB'``."""
    return lambda v: f"{v:,.{digits}f}{unit}"
