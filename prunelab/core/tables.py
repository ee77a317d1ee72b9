"""A small results table: rows of named values that print as text, render as HTML in notebooks,
and convert to plain Python (or to pandas, when it is installed) for further work."""

from __future__ import annotations

import html
from typing import Callable, Iterator, Mapping, Sequence


class Table:
    """Rows (dicts with the same keys) with per-column formatting.

    ``formats`` maps a column to a function that turns a value into display text; columns
    without one use ``str``. The values themselves stay numbers.
    """

    def __init__(self, columns: Sequence[str], rows: Sequence[Mapping] = (), *,
                 formats: Mapping[str, Callable[[object], str]] | None = None, title: str = ""):
        self.columns = list(columns)
        self.formats = dict(formats or {})
        self.title = title
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

    def _text(self, column: str, value) -> str:
        return self.formats.get(column, str)(value)

    def __str__(self) -> str:
        """A Markdown table."""
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---:" for _ in self.columns) + "|"
        body = ["| " + " | ".join(self._text(c, r[c]) for c in self.columns) + " |" for r in self._rows]
        return "\n".join(([self.title, ""] if self.title else []) + [head, rule] + body)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} rows)\n{self}"

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._text(c, r[c]))}</td>" for c in self.columns)
                       + "</tr>" for r in self._rows)
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def percent(digits: int = 1) -> Callable[[object], str]:
    return lambda v: "" if v is None else f"{v:.{digits}%}"


def signed_points(v) -> str:
    """An accuracy difference in percentage points."""
    return "" if v is None else f"{100 * v:+.1f} pt"


def count(v) -> str:
    return f"{v:,}"


def seconds(v) -> str:
    return f"{v:.1f} s"
