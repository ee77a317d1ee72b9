"""One number format for accuracy drops: the readout's "-28.9 pts", in the library's tables too."""

from __future__ import annotations

import re

from prunelab.core.tables import points, signed_points
from prunelab.sensitivity import Allocation


def test_drops_read_as_the_readouts_change_everywhere():
    assert points(-0.289) == "-28.9 pts"
    assert signed_points(0.6) == "-60.0 pts"  # a drop of 60 points is the change -60.0 pts
    assert signed_points(0.0) == "+0.0 pts" and signed_points(None) == ""


def test_the_allocation_table_and_summary_print_drops_in_the_one_format():
    result = Allocation(sparsities={"0": 0.9, "2": 0.5}, single_drops={"0": 0.6, "2": 0.01}, predicted_drop=0.61,
                        baseline=0.95, accuracy=0.30, sparsity=0.8, overall_sparsity=0.8, granularity="unstructured")
    text = str(result.table()) + result.summary() + result.table()._repr_html_()
    assert "-60.0 pts" in text and "-1.0 pts" in text and "-61.0 pts" in text and "-65.0 pts" in text
    assert not re.search(r"\d pt\b", text) and "+60" not in text


def test_the_sensitivity_table_prints_drops_in_the_one_format(mlp_demo_pruner):
    table = mlp_demo_pruner.sensitivity(sparsities=[0.99], layers=[mlp_demo_pruner.layer_names[0]])
    text = str(table)
    assert re.search(r"[-+]\d+\.\d pts", text), text
    assert not re.search(r"\d pt\b", text), text
