"""BokehJS is loaded inline by the explorer itself: offline, once per kernel, core bundle only."""

import bokeh.io

from prunelab.explorer import bokeh_loader


def test_loads_inline_once_inside_a_kernel(monkeypatch):
    calls = []
    monkeypatch.setattr(bokeh_loader, "_loaded", False)
    monkeypatch.setattr(bokeh_loader, "in_kernel", lambda: True)
    monkeypatch.setattr(bokeh.io, "output_notebook", lambda resources, **kw: calls.append((resources, kw)))
    assert bokeh_loader.load_bokehjs() is True
    assert bokeh_loader.load_bokehjs() is False  # once per kernel
    (resources, kw), = calls
    assert resources.mode == "inline" and resources.components == ["bokeh"] and kw["hide_banner"]
    assert resources.js_files == []  # no script fetched from anywhere
    js = "".join(resources.js_raw)
    assert len(js) > 100_000 and "cdn.bokeh.org" not in js  # all of the inline JavaScript, not its start


def test_nothing_is_published_outside_a_kernel(monkeypatch):
    monkeypatch.setattr(bokeh_loader, "_loaded", False)
    assert not bokeh_loader.in_kernel()
    assert bokeh_loader.load_bokehjs() is False
