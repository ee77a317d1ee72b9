"""The Export panel's table shows the int8 and structured+int8 rows with their real file size,
measured latency and measured accuracy."""

import pytest

from prunelab.explorer.panels.export import ExportPanel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_int8_rows_show_size_latency_and_accuracy(cnn_demo_pruner, tmp_path):
    cnn_demo_pruner.prune(0.5, granularity="structured", scope="layer")
    panel = ExportPanel(cnn_demo_pruner, directory=tmp_path, formats=("state_dict", "int8"))
    panel.measure_button.click()
    rows = {r.format: r for r in panel.report.rows}
    assert set(rows) == {"state_dict", "int8", "structured+int8"}
    for name in ("int8", "structured+int8"):
        r = rows[name]
        assert r.bytes and r.accuracy is not None and r.latency is not None
        cells = (f"<td>{name}</td><td style='text-align:right'>{r.bytes / 1e3:,.1f} kB</td>"
                 f"<td style='text-align:right'>{panel.report.share(r):.0%}</td>"
                 f"<td style='text-align:right'>{r.accuracy:.2%}</td>"
                 f"<td style='text-align:right'>{r.latency.median * 1e3:.3f} ms</td>")
        assert cells in panel.table.value
    assert rows["int8"].bytes < 0.35 * rows["state_dict"].bytes  # int8 weights: about a quarter
    assert "<th>Accuracy</th><th>Latency</th>" in panel.table.value
    assert f"{panel.report.accuracy['dense (masked)']:.2%}" in panel.table.value  # the float one, beside
