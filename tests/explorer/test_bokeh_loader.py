"""BokehJS is loaded inline by the explorer itself: offline, once per kernel, core bundle only."""

from prunelab.explorer import bokeh_loader


def test_loads_inline_once_inside_a_kernel(monkeypatch):
    import IPython.display

    calls = []
    monkeypatch.setattr(bokeh_loader, "_loaded", False)
    monkeypatch.setattr(bokeh_loader, "in_kernel", lambda: True)
    monkeypatch.setattr(IPython.display, "publish_display_data", lambda data, **kw: calls.append(data))
    assert bokeh_loader.load_bokehjs() is True
    assert bokeh_loader.load_bokehjs() is False  # once per kernel
    (data,) = calls
    # BokehJS once (not again as application/javascript), whole, from the installed package
    assert set(data) == {bokeh_loader.LOAD_MIME, "text/plain"}
    js = data[bokeh_loader.LOAD_MIME]
    assert len(js) > 1_000_000 and js.count("BEGIN bokeh.min.js") == 1 and "cdn.bokeh.org" not in js


def test_nothing_is_published_outside_a_kernel(monkeypatch):
    monkeypatch.setattr(bokeh_loader, "_loaded", False)
    assert not bokeh_loader.in_kernel()
    assert bokeh_loader.load_bokehjs() is False
