"""Table: rows of named values that print as Markdown, render as HTML, and convert to plain data."""

import pytest

from prunelab import Table
from prunelab.core.tables import percent


@pytest.fixture
def table():
    return Table(["layer", "accuracy"], [{"layer": "0", "accuracy": 0.5}, {"layer": "a<b", "accuracy": 0.25}],
                 formats={"accuracy": percent(1)}, title="Drops")


def test_rows_are_copies_in_column_order(table):
    rows = table.rows
    assert rows == [{"layer": "0", "accuracy": 0.5}, {"layer": "a<b", "accuracy": 0.25}]
    rows[0]["accuracy"] = 1.0
    assert table.rows[0]["accuracy"] == 0.5  # changing a copy changes nothing
    assert len(table) == 2 and list(table) == table.rows and table[1] == table.rows[1]
    assert table[:1] == [{"layer": "0", "accuracy": 0.5}]


def test_column_gives_the_values_and_names_the_columns_when_unknown(table):
    assert table.column("accuracy") == [0.5, 0.25]  # numbers, not display text
    with pytest.raises(KeyError, match=r"no column 'acc'; columns: \['layer', 'accuracy'\]"):
        table.column("acc")


def test_append_refuses_a_row_without_every_column(table):
    with pytest.raises(ValueError, match=r"row lacks columns \['accuracy'\]"):
        table.append({"layer": "2"})
    table.append({"layer": "2", "accuracy": 1.0, "extra": "dropped"})
    assert table.rows[-1] == {"layer": "2", "accuracy": 1.0}


def test_str_is_a_markdown_table_with_the_formats(table):
    assert str(table) == "Drops\n\n| layer | accuracy |\n|---:|---:|\n| 0 | 50.0% |\n| a<b | 25.0% |"
    assert str(Table(["n"], [{"n": 3}])) == "| n |\n|---:|\n| 3 |"
    assert repr(table).startswith("Table(2 rows)\nDrops")


def test_html_escapes_and_formats(table):
    html = table._repr_html_()  # what Jupyter shows
    assert html.startswith("<table><caption>Drops</caption><thead><tr><th>layer</th><th>accuracy</th>")
    assert "<td>a&lt;b</td><td>25.0%</td>" in html and "a<b" not in html


def test_to_pandas_gives_a_frame_or_says_what_to_install(table, monkeypatch):
    try:
        import pandas  # noqa: F401  (not a prunelab dependency)
    except ImportError:
        with pytest.raises(ImportError, match=r"to_pandas\(\) needs pandas \(pip install pandas\)"):
            table.to_pandas()
        return
    frame = table.to_pandas()
    assert list(frame.columns) == ["layer", "accuracy"] and frame["accuracy"].tolist() == [0.5, 0.25]
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        table.to_pandas()
