"""What a person sees and touches in the prunelab explorer, by its stable CSS classes.

Used by the explorer's browser tests and by bench/browser_latency.py.
"""

from __future__ import annotations

import json
import re
import time

from labdriver import NotebookPage

EXPLORER = ".prunelab-explorer"
GLOBAL_SLIDER = ".prunelab-global-slider"
LAYER_SLIDER = ".prunelab-layer-slider"
RESET = "button.prunelab-reset"
UNDO = "button.prunelab-undo"
REDO = "button.prunelab-redo"
GRANULARITY = ".prunelab-granularity"  # toggle buttons: unstructured, structured, 2:4
MODE = ".prunelab-mode"  # toggle buttons: "fraction", "|w| threshold"
THRESHOLD_SLIDER = ".prunelab-threshold-slider"
GLOBAL_NOTE = ".prunelab-global-note"  # beside the structured slider: the weights' sparsity
# The readout: the HTML widget that holds the accuracy span ("NN.N%").
METRICS = ".prunelab-metrics:has(.prunelab-accuracy)"
ACCURACY = ".prunelab-metrics .prunelab-accuracy"
PROGRESS = ".prunelab-progress"
# The bokeh views, by the suffix of their class: "trace" is accuracy against sparsity of every state visited.
VIEWS = ("connectivity", "weights", "importance", "interpretability", "trace")


def view(slug: str) -> str:
    """Selector of one bokeh view's widget (`prunelab-view prunelab-<slug>`)."""
    return f".prunelab-view.prunelab-{slug}"


def accuracy(nb: NotebookPage) -> float:
    """The accuracy the readout shows, in percent."""
    text = nb.text(ACCURACY)
    m = re.fullmatch(r"\s*(\d+(?:\.\d)?)%\s*", text)
    assert m, f"the accuracy readout shows {text!r}, not 'NN.N%'"
    return float(m.group(1))


def wait_ready(nb: NotebookPage, timeout_s: float = 120.0) -> None:
    """Wait until the explorer is drawn: sliders, readout and every view's canvas."""
    nb.wait_for(f"{GLOBAL_SLIDER} .noUi-handle", timeout_s=timeout_s)
    nb.wait_for(ACCURACY, timeout_s=timeout_s)
    deadline = time.monotonic() + timeout_s
    while any(not nb.canvases(view(s)) for s in VIEWS):
        if time.monotonic() > deadline:
            missing = [s for s in VIEWS if not nb.canvases(view(s))]
            raise AssertionError(f"these explorer views drew no canvas in {timeout_s} s: {missing}")
        nb.page.wait_for_timeout(200)
    settle(nb)


def settle(nb: NotebookPage, quiet_ms: int = 600, timeout_s: float = 60.0) -> None:
    """Wait until the kernel is idle, no background work shows, and the readout stopped changing."""
    deadline = time.monotonic() + timeout_s
    last, since, busy = None, time.monotonic(), ""
    while time.monotonic() < deadline:
        nb.wait_kernel_idle(timeout_s)
        busy = nb.page.evaluate(
            """(s) => { const e = document.querySelector(s);
                        return e && getComputedStyle(e).visibility !== 'hidden' ? e.innerText || 'busy' : ''; }""",
            PROGRESS,
        )
        text = nb.text(METRICS)
        if text != last or busy:
            last, since = text, time.monotonic()
        elif (time.monotonic() - since) * 1000 >= quiet_ms:
            return
        nb.page.wait_for_timeout(100)
    raise AssertionError(f"the explorer did not settle in {timeout_s} s (busy: {busy!r}; readout: {last!r})")


def click(nb: NotebookPage, button: str) -> None:
    """Press a button (reset, undo, redo...) with the mouse and wait for the explorer to settle."""
    nb.page.locator(button).first.click()
    nb.page.wait_for_timeout(150)
    settle(nb)


def click_reset(nb: NotebookPage) -> None:
    """Press reset with the mouse and wait for the explorer to settle."""
    click(nb, RESET)


def choose(nb: NotebookPage, group: str, label: str) -> None:
    """Click the toggle button labelled exactly `label` in `group` (GRANULARITY, MODE) and settle.
    Exactly: "unstructured" contains "structured"."""
    nb.page.locator(f"{group} button", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$")).first.click()
    nb.page.wait_for_timeout(150)
    settle(nb)


def chosen(nb: NotebookPage, group: str) -> str:
    """The label of the toggle button shown pressed in `group`."""
    return nb.text(f"{group} button.mod-active").strip()


def view_hashes(nb: NotebookPage) -> dict[str, list[int]]:
    """Pixel hashes of every view's pictures, by view."""
    return {s: [c["hash"] for c in nb.canvases(view(s))] for s in VIEWS}


def redrawn_views(nb: NotebookPage, before: dict[str, list[int]], expect: tuple[str, ...],
                  timeout_s: float = 15.0) -> set[str]:
    """Wait until the views in `expect` all drew something different from `before`; return all that did."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = view_hashes(nb)
        changed = {s for s in VIEWS if now[s] != before[s]}
        if set(expect) <= changed or time.monotonic() > deadline:
            return changed
        nb.page.wait_for_timeout(200)


def views_without_data(nb: NotebookPage, min_colour: int = 5) -> dict[str, list[dict]]:
    """Views whose pictures show no data: no canvas, or not one coloured pixel beyond noise.

    Axes, grid lines and text are grey (no saturated pixels at all); every explorer view draws its
    data in colour (importance colour maps, kept/pruned bars, criterion colours; the trace's first
    state is one small point). So a picture with no colour is a view that never drew its data.
    Only meaningful where the data is visible: at 100% sparsity edges and bars fade out.
    """
    missing = {}
    for s in VIEWS:
        pictures = nb.canvases(view(s))
        if not pictures or max(p["colour"] for p in pictures) < min_colour:
            missing[s] = pictures
    return missing


TAB = ".prunelab-tabs .lm-TabBar-tab"
# The page of the tab now shown (ipywidgets' Tab hides the others with lm-mod-hidden).
VISIBLE_TAB_PAGE = ".prunelab-tabs .widget-tab-contents > .lm-Widget:not(.lm-mod-hidden)"


def sparsity(nb: NotebookPage) -> float:
    """The sparsity of prunable weights the readout shows ("sparsity 10.0% of prunable weights"), 0..1."""
    m = re.search(r"sparsity\s+(\d+(?:\.\d+)?)%", nb.text(METRICS))
    assert m, f"the readout shows no sparsity: {nb.text(METRICS)!r}"
    return float(m.group(1)) / 100


def assert_offline(nb: NotebookPage) -> None:
    """BokehJS travels inside the notebook (not from cdn.bokeh.org: every loader output read whole),
    and the page fetched nothing but from the private JupyterLab."""
    loaders = nb.output_data("application/vnd.bokehjs_load.v0+json")
    assert loaders, "no BokehJS loader output"
    assert not [d for d in loaders if "cdn.bokeh.org" in json.dumps(d)], "BokehJS is loaded from the CDN"
    assert nb.outside_requests() == []


def open_file_browser(nb: NotebookPage) -> None:
    """JupyterLab's left area with the file browser shown, as on a first start: where people first
    see the explorer (at 1280x800 it leaves the notebook its narrow width)."""
    nb.page.evaluate("() => window.jupyterapp.commands.execute('filebrowser:activate')")
    nb.page.wait_for_function("() => !window.jupyterapp.shell.leftCollapsed", timeout=10_000)
    nb.page.wait_for_timeout(500)


# Boxes of everything the explorer draws (shadow roots included: bokeh draws inside them), against
# the box of the output area that holds it. Playwright's Chromium hides scrollbars, so a scrollbar
# is found from sizes: an element that scrolls sideways (overflow-x auto/scroll and wider content).
_JS_FIT = """(sel) => {
  const ex = document.querySelector(sel);
  if (!ex) return null;
  const area = ex.closest('.jp-OutputArea-output') || ex.parentElement;
  const a = area.getBoundingClientRect();
  const outside = [], scrollers = [];
  const name = (el) => {
    const cls = (typeof el.className === 'string' ? el.className : '').split(/\\s+/)
        .filter(c => c.startsWith('prunelab') || c.startsWith('bk-') || c.startsWith('widget') ||
                     c.startsWith('jupyter') || c.startsWith('lm-')).slice(0, 3).join('.');
    const text = (el.innerText || '').trim().slice(0, 30);
    return el.tagName.toLowerCase() + (cls ? '.' + cls : '') + (text ? ' "' + text + '"' : '');
  };
  // An element inside a box that clips (overflow hidden/clip, itself checked) cannot show outside it.
  const clips = (el) => /(hidden|clip)/.test(getComputedStyle(el).overflowX);
  const clipped = (el, top) => { for (let p = el.parentElement || (el.getRootNode().host);
                                      p && p !== top; p = p.parentElement || (p.getRootNode().host)) {
                                   if (clips(p)) return true; }
                                 return false; };
  const visit = (root) => {
    for (const el of root.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      const style = getComputedStyle(el);
      if (r.width > 0 && r.height > 0 && style.visibility !== 'hidden' && style.display !== 'none') {
        if ((r.right > a.right + 1 || r.left < a.left - 1) && !clipped(el, ex))
          outside.push(name(el) + ' spans x ' + Math.round(r.left) + '..' + Math.round(r.right));
        if (/(auto|scroll)/.test(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
          scrollers.push(name(el) + ' scrolls sideways: ' + el.scrollWidth + ' > ' + el.clientWidth);
      }
      if (el.shadowRoot) visit(el.shadowRoot);
    }
  };
  visit(ex);
  const r = ex.getBoundingClientRect();
  if (r.right > a.right + 1 || r.left < a.left - 1) outside.push('the explorer itself spans x ' + r.left + '..' + r.right);
  for (let el = ex; el && el !== document.body; el = el.parentElement) {
    const style = getComputedStyle(el);
    if (/(auto|scroll)/.test(style.overflowX) && el.scrollWidth > el.clientWidth + 1)
      scrollers.push('around the explorer: ' + name(el) + ' scrolls sideways: ' + el.scrollWidth + ' > ' + el.clientWidth);
  }
  const box = (s) => { const e = ex.querySelector(s); if (!e) return null;
                       const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, width: r.width}; };
  return {area: {left: a.left, right: a.right, width: a.width}, explorer: (() => { const r = ex.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top, width: r.width}; })(),
          controls: box('.prunelab-controls'), tabs: box('.prunelab-tabs'), connectivity: box('.prunelab-connectivity'),
          outside: [...new Set(outside)].slice(0, 20), scrollers: [...new Set(scrollers)].slice(0, 20)};
}"""


def fit(nb: NotebookPage) -> dict:
    """Where the explorer lies in its output area: the boxes of the area, the explorer, the controls,
    the tabs and the connectivity view; every visible element that reaches outside the area
    ("outside") and every element that would show a horizontal scrollbar ("scrollers")."""
    return nb.page.evaluate(_JS_FIT, EXPLORER)


def cut_off_labels(nb) -> list[str]:
    """Texts the explorer shows cut off (tab titles, buttons, labels): an element holding text
    that is wider than its box, where the box hides what overflows (clipped or with an ellipsis)."""
    return nb.page.evaluate("""(sel) => [...document.querySelector(sel).querySelectorAll('*')]
        .filter(el => { const s = getComputedStyle(el), r = el.getBoundingClientRect();
                        const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
                        return text && r.width > 0 && s.visibility !== 'hidden' && el.scrollWidth > el.clientWidth
                               && (s.textOverflow === 'ellipsis' || /(hidden|clip)/.test(s.overflowX)); })
        .map(el => el.textContent.trim().slice(0, 40))""", EXPLORER)
