"""Drive JupyterLab in headless Chromium the way a person uses it.

Shared by the browser tests (through conftest.py fixtures) and by bench/browser_latency.py.
Nothing here knows about prunelab: it opens notebooks on a private JupyterLab (labserver.py),
runs them, and collects every kind of failure a person would see (or would miss, but should not).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from labserver import LabServer

# Text JupyterLab, ipywidgets and jupyter_bokeh put into an output when its JavaScript failed.
OUTPUT_ERROR_TEXTS = (
    "Click to show javascript error",  # jupyter_bokeh: BokehJS missing or a bokeh view threw
    "Error displaying widget",  # ipywidgets: the view could not be created
    "Javascript Error:",  # JupyterLab: an application/javascript output threw
    "Could not instantiate widget",
    "Failed to load model class",
    "Failed to load view class",
)

OUTPUTS = ".jp-Notebook .jp-OutputArea-output"


# ---------------------------------------------------------------- in-page JavaScript snippets

_JS_NOTEBOOK_READY = """() => {
  const app = window.jupyterapp;
  const w = app && app.shell.currentWidget;
  if (!w || !w.sessionContext || !w.content || !w.content.model) return false;
  const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}"""

# Record every error and stderr message the kernel sends, wherever JupyterLab routes it
# (cell outputs, the log console, or nowhere).
_JS_LISTEN_KERNEL = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const kernel = w.sessionContext.session.kernel;
  window.__kernelErrors = [];
  kernel.iopubMessage.connect((_, msg) => {
    const t = msg.header.msg_type;
    if (t === 'error') {
      window.__kernelErrors.push(msg.content.ename + ': ' + msg.content.evalue + '\\n' +
                                 (msg.content.traceback || []).join('\\n'));
    } else if (t === 'stream' && msg.content.name === 'stderr' && /Traceback|Error:/.test(msg.content.text)) {
      window.__kernelErrors.push(msg.content.text);
    }
  });
  return kernel.id;
}"""

_JS_RUN_ALL = """async (timeoutMs) => {
  const app = window.jupyterapp;
  const run = app.commands.execute('notebook:run-all-cells');
  const timer = new Promise((_, reject) =>
      setTimeout(() => reject(new Error('run-all-cells did not finish in ' + timeoutMs + ' ms')), timeoutMs));
  return await Promise.race([run, timer]);
}"""

_JS_CELL_STATE = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const cells = [];
  for (let i = 0; i < nb.model.cells.length; i++) {
    const c = nb.model.cells.get(i);
    if (c.type !== 'code') continue;
    const outs = [];
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j);
      const js = o.toJSON();
      outs.push({type: o.type, ename: js.ename || null, evalue: js.evalue || null,
                 name: js.name || null, text: typeof js.text === 'string' ? js.text :
                 (Array.isArray(js.text) ? js.text.join('') : null)});
    }
    cells.push({index: i, count: c.executionCount, source: c.sharedModel.getSource().slice(0, 80), outputs: outs});
  }
  return cells;
}"""

_JS_OUTPUT_DATA = """(mime) => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const found = [];
  for (let i = 0; i < nb.model.cells.length; i++) {
    const c = nb.model.cells.get(i);
    if (c.type !== 'code') continue;
    for (let j = 0; j < c.outputs.length; j++) {
      const data = c.outputs.get(j).toJSON().data;
      if (data && mime in data) found.push(data[mime]);
    }
  }
  return found;
}"""

_JS_OUTPUT_ERROR_TEXT = """(needles) => {
  const found = [];
  // Whole output children: JupyterLab's own "Javascript Error" replaces the output's classes.
  const areas = document.querySelectorAll('.jp-Notebook .jp-OutputArea-child');
  const visit = (root, where) => {
    for (const el of root.querySelectorAll('.jupyter-widgets-error-widget, pre, div, span')) {
      if (el.shadowRoot) visit(el.shadowRoot, where);
    }
    const text = root.textContent || '';
    for (const n of needles) if (text.includes(n)) found.push(where + ': ' + n);
    if (root.querySelector && root.querySelector('.jupyter-widgets-error-widget'))
      found.push(where + ': ipywidgets error view');
  };
  areas.forEach((a, i) => visit(a, 'output ' + i));
  return [...new Set(found)];
}"""

# Pixels of every <canvas> in the outputs, shadow roots included (bokeh draws inside them).
# Per canvas: its layer group, size, a hash of its pixels, and how many pixels differ from its most
# common colour ("ink": for a transparent overlay, the pixels drawn at all), and how many are saturated
# colour ("colour": data glyphs, as opposed to grey axes, grid lines and text).
_JS_CANVASES = """(selector) => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') found.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  for (const area of document.querySelectorAll(selector)) walk(area);
  const parents = [];
  return found.map((c) => {
    // Canvases stacked in one parent are layers of one picture (bokeh: primary + overlays).
    let group = parents.indexOf(c.parentNode);
    if (group < 0) { parents.push(c.parentNode); group = parents.length - 1; }
    const w = c.width, h = c.height;
    const r = c.getBoundingClientRect();
    if (!w || !h) return {group, w, h, shown: r.width * r.height, ink: 0, colour: 0, hash: 0};
    const scratch = document.createElement('canvas');
    scratch.width = w; scratch.height = h;
    const ctx = scratch.getContext('2d');
    ctx.drawImage(c, 0, 0);
    const px = ctx.getImageData(0, 0, w, h).data;
    const counts = new Map();
    let hash = 0, colour = 0;
    for (let i = 0; i < px.length; i += 4) {
      const v = ((px[i] << 24) | (px[i + 1] << 16) | (px[i + 2] << 8) | px[i + 3]) >>> 0;
      counts.set(v, (counts.get(v) || 0) + 1);
      hash = (Math.imul(hash, 31) + v) >>> 0;
      const hi = Math.max(px[i], px[i + 1], px[i + 2]), lo = Math.min(px[i], px[i + 1], px[i + 2]);
      if (px[i + 3] > 64 && hi - lo > 48) colour++;  // a saturated pixel: data, not grey axes or text
    }
    let top = 0;
    for (const n of counts.values()) if (n > top) top = n;
    return {group, w, h, shown: r.width * r.height, ink: w * h - top, colour, colours: counts.size, hash};
  });
}"""


# ---------------------------------------------------------------- a notebook open in a page


@dataclass
class NotebookPage:
    """One notebook open in its own browser page, with everything that went wrong collected."""

    server: LabServer
    page: object  # playwright.sync_api.Page
    notebook: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, in order

    def run_all(self, timeout_s: float = 120.0) -> None:
        """Run every cell (notebook:run-all-cells) and wait until the kernel is done."""
        self.page.evaluate(_JS_LISTEN_KERNEL)
        self.page.evaluate(_JS_RUN_ALL, int(timeout_s * 1000))
        self.page.wait_for_function(_JS_NOTEBOOK_READY, timeout=timeout_s * 1000)

    def cells(self) -> list[dict]:
        """Code cells with their execution count and outputs, as the notebook model holds them."""
        return self.page.evaluate(_JS_CELL_STATE)

    def output_data(self, mime: str) -> list:
        """The data of every output with this MIME type, whole, as the notebook model holds it."""
        return self.page.evaluate(_JS_OUTPUT_DATA, mime)

    def stdout(self) -> str:
        """Everything the notebook's cells printed (their stdout streams), in cell order."""
        return "".join(o["text"] or "" for c in self.cells() for o in c["outputs"] if o["name"] == "stdout")

    def outside_requests(self) -> list[str]:
        """URLs the page asked for from anywhere but the private JupyterLab (a CDN, say)."""
        local = (f"http://127.0.0.1:{self.server.port}/", f"ws://127.0.0.1:{self.server.port}/")
        return [u for u in self.requests if not u.startswith(local + ("data:", "blob:", "about:"))]

    def wait_for(self, selector: str, timeout_s: float = 60.0, count: int = 1):
        """Wait until at least `count` elements match (widgets render after their cell finished)."""
        loc = self.page.locator(selector)
        loc.first.wait_for(state="visible", timeout=timeout_s * 1000)
        if count > 1:
            self.page.wait_for_function(
                "([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, count],
                timeout=timeout_s * 1000,
            )
        return loc

    def wait_kernel_idle(self, timeout_s: float = 60.0) -> None:
        self.page.wait_for_function(_JS_NOTEBOOK_READY, timeout=timeout_s * 1000)

    def unexecuted_cells(self) -> list[dict]:
        return [c for c in self.cells() if c["count"] is None and c["source"].strip()]

    def errors(self) -> list[str]:
        """Everything a person would count as broken, each as one readable line (empty: all well).

        JavaScript errors (console.error and uncaught exceptions), error outputs in cells, error
        texts drawn into outputs by ipywidgets/bokeh/JupyterLab, kernel error and traceback
        messages (also those from widget callbacks, which no cell shows), and tracebacks in the
        server log.
        """
        found = [f"console.error: {e}" for e in self.console_errors]
        found += [f"uncaught JavaScript error: {e}" for e in self.page_errors]
        for cell in self.cells():
            for out in cell["outputs"]:
                if out["type"] == "error":
                    found.append(f"cell {cell['index']} error output: {out['ename']}: {out['evalue']}")
        found += [f"error drawn in {e}" for e in self.page.evaluate(_JS_OUTPUT_ERROR_TEXT, list(OUTPUT_ERROR_TEXTS))]
        kernel_errors = self.page.evaluate("() => window.__kernelErrors || []")
        found += [f"kernel error message: {_head_tail(_ANSI.sub('', e))}" for e in kernel_errors]
        found += [f"server log: {_head_tail(e)}" for e in self.server.new_log_errors()]
        return list(dict.fromkeys(found))

    def canvases(self, selector: str = OUTPUTS, min_side: int = 32) -> list[dict]:
        """One entry per picture drawn inside `selector`: its layers' canvases summed.

        Each entry: size (w, h), area shown on screen, ink (pixels that differ from each layer's
        most common colour), colour (saturated pixels: data rather than grey axes and text), and a
        hash of all layers' pixels, which changes when the picture is redrawn differently.
        Canvases smaller than `min_side` on a side (bokeh's legend swatches) are left out.
        """
        pictures: dict[int, dict] = {}
        for c in self.page.evaluate(_JS_CANVASES, selector):
            if c["w"] and c["h"] and min(c["w"], c["h"]) < min_side:
                continue
            empty = {"w": c["w"], "h": c["h"], "shown": 0, "ink": 0, "colour": 0, "hash": 0}
            p = pictures.setdefault(c["group"], empty)
            p["shown"] = max(p["shown"], c["shown"])
            p["ink"] += c["ink"]
            p["colour"] += c["colour"]
            p["hash"] = (p["hash"] * 1000003 + c["hash"]) % (1 << 61)
        return list(pictures.values())

    def blank_canvases(self, selector: str = OUTPUTS, min_ink: int = 50) -> list[dict]:
        """Pictures shown on screen with (almost) nothing drawn: a view that never drew."""
        return [c for c in self.canvases(selector) if c["shown"] > 0 and (c["w"] * c["h"] == 0 or c["ink"] < min_ink)]

    # -- acting as a person: keyboard and mouse only, never setting widget values from code

    def press_keys(self, selector: str, key: str, times: int = 1) -> None:
        """Focus the slider handle inside `selector` (as Tab would) and press `key` `times` times."""
        handle = self.page.locator(f"{selector} .noUi-handle").first
        handle.focus()
        for _ in range(times):
            self.page.keyboard.press(key)

    def drag_slider(self, selector: str, fraction: float) -> None:
        """Drag the handle of the slider inside `selector` with the mouse to `fraction` of its track."""
        handle = self.page.locator(f"{selector} .noUi-handle").first
        handle.scroll_into_view_if_needed()
        track = self.page.locator(f"{selector} .noUi-base").first.bounding_box()
        grip = handle.bounding_box()
        mouse = self.page.mouse
        mouse.move(grip["x"] + grip["width"] / 2, grip["y"] + grip["height"] / 2)
        mouse.down()
        mouse.move(track["x"] + track["width"] * fraction, track["y"] + track["height"] / 2, steps=8)
        mouse.up()

    def slider_readout(self, selector: str, nth: int = 0) -> str:
        """The text beside the `nth` slider matching `selector`, as a person reads it ("3%", "10")."""
        return self.page.locator(f"{selector} .widget-readout").nth(nth).inner_text().strip()

    def slider_value(self, selector: str, nth: int = 0) -> float:
        """The `nth` slider's value as its readout shows it ("3%" -> 0.03). Not aria-valuenow:
        noUiSlider rounds that to one decimal."""
        text = self.slider_readout(selector, nth).replace(",", "")
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)

    def kernel_print(self, code: str, timeout_s: float = 30.0) -> str:
        """Run ``code`` in the notebook's kernel (as a person could in a new cell, without one) and
        return what it printed; for checks of what the kernel received from the page."""
        return self.page.evaluate(
            """async ([code, ms]) => {
                 const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
                 let out = '';
                 const f = k.requestExecute({code, silent: false, store_history: false});
                 f.onIOPub = (m) => { const t = m.header.msg_type;
                   if (t === 'stream') out += m.content.text; if (t === 'error') out += m.content.evalue; };
                 await Promise.race([f.done, new Promise((_, no) => setTimeout(() => no(new Error('timed out')), ms))]);
                 return out; }""", [code, timeout_s * 1000])

    def text(self, selector: str) -> str:
        return self.page.locator(selector).first.inner_text()

    def wait_text_change(self, selector: str, old: str, timeout_s: float = 30.0) -> str:
        """Wait until the element's text differs from `old`; return the new text."""
        self.page.wait_for_function(
            "([s, old]) => { const e = document.querySelector(s); return e && e.innerText !== old; }",
            arg=[selector, old], timeout=timeout_s * 1000,
        )
        return self.text(selector)

    def wait_canvas_change(self, before: list[dict], selector: str = OUTPUTS, timeout_s: float = 15.0) -> list[dict]:
        """Wait until some picture's pixels differ from `before` (a view redrew); return the new state."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.canvases(selector)
            if [c["hash"] for c in now] != [c["hash"] for c in before] or time.monotonic() > deadline:
                return now
            self.page.wait_for_timeout(100)

    def screenshot(self, folder: Path, name: str, max_height: int = 8000) -> Path:
        """Save a picture of the whole notebook: the window grows to the notebook's height meanwhile."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        size = self.page.viewport_size
        overflow = self.page.evaluate(
            """() => { const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
                       || document.querySelector('.jp-NotebookPanel-notebook');
                       return s ? s.scrollHeight - s.clientHeight : 0; }"""
        )
        try:
            if overflow > 0:
                tall = min(size["height"] + overflow, max_height)
                self.page.set_viewport_size({"width": size["width"], "height": tall})
                # from the notebook's top: scrolled to a widget, the taller window showed only
                # what lay below it, and empty space after the last cell
                self.page.evaluate(
                    """() => { const s = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer')
                               || document.querySelector('.jp-NotebookPanel-notebook'); if (s) s.scrollTop = 0; }""")
                self.page.wait_for_timeout(400)  # let bokeh re-lay out to the new window
            self.page.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(size)
        return path

    def close(self) -> None:
        self.page.context.close()


def open_notebook(server: LabServer, browser, notebook: str, timeout_s: float = 90.0,
                  viewport=(1400, 1000)) -> NotebookPage:
    """Open `notebook` (a path under the server root) in a new private page; wait for its kernel."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=True)
    page = context.new_page()
    nbp = NotebookPage(server=server, page=page, notebook=notebook)
    page.on("console", lambda m: m.type == "error" and nbp.console_errors.append(_console_text(m)))
    page.on("pageerror", lambda e: nbp.page_errors.append(str(e)))
    page.on("request", lambda r: nbp.requests.append(r.url))
    server.mark_log()
    workspace = "w" + secrets.token_hex(4)
    page.goto(server.url(notebook, workspace), wait_until="domcontentloaded", timeout=timeout_s * 1000)
    page.wait_for_selector(".jp-Notebook", timeout=timeout_s * 1000)
    page.wait_for_function(_JS_NOTEBOOK_READY, timeout=timeout_s * 1000)
    return nbp


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _head_tail(text: str, head: int = 300, tail: int = 1200) -> str:
    """A traceback's first and last lines: what failed, and where."""
    return text if len(text) <= head + tail else f"{text[:head]}\n[...]\n{text[-tail:]}"


def _console_text(msg) -> str:
    loc = msg.location or {}
    where = f" ({loc.get('url', '')}:{loc.get('lineNumber', '')})" if loc.get("url") else ""
    return f"{msg.text}{where}"
