"""What the page's main thread does, from a Chrome performance trace (the DevTools timeline).

Used by bench/browser_latency.py (``--trace``) to say where a drag's time goes in the page:
script, style recalculation, layout, paint, garbage collection, by self time (a nested event's
time counts once, for the innermost event), and which scripts (bokeh, the widget manager, ...)
take it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

CATEGORIES = [
    "devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "v8.execute",
    "blink", "blink.user_timing", "toplevel", "disabled-by-default-devtools.timeline.frame",
    *(["disabled-by-default-v8.cpu_profiler"] if os.environ.get("PRUNELAB_TRACE_PROFILE") else []),
]
# Timeline event names by what they are (the DevTools summary's buckets).
KINDS = {
    "script": ("FunctionCall", "EvaluateScript", "v8.compile", "v8.callFunction", "TimerFire", "EventDispatch",
               "FireAnimationFrame", "RunMicrotasks", "v8.run", "V8.Execute", "XHRReadyStateChange",
               "v8.evaluateModule", "CompileScript", "CompileCode", "ParseHTML"),
    "style": ("UpdateLayoutTree", "RecalculateStyles", "ScheduleStyleRecalculation", "ParseAuthorStyleSheet"),
    "layout": ("Layout", "InvalidateLayout", "UpdateLayerTree", "Layerize", "PrePaint", "IntersectionObserverController::computeIntersections"),
    "paint": ("Paint", "PaintImage", "Rasterize", "RasterTask", "CompositeLayers", "Commit", "Decode Image",
              "ImageDecodeTask", "Draw LazyPixelRef"),
    "gc": ("MinorGC", "MajorGC", "V8.GCScavenger", "V8.GC_MC_BACKGROUND_MARKING", "BlinkGC.AtomicPhase",
           "V8.GCFinalizeMC", "V8.GCIncrementalMarking", "V8.GCCompactor", "ThreadState::performIdleLazySweep"),
}
_KIND_OF = {name: kind for kind, names in KINDS.items() for name in names}
TASK = ("ThreadControllerImpl::RunTask", "RunTask")


@dataclass
class MainThread:
    """The renderer main thread over the traced time: busy ms by kind (self time), the tasks,
    and the scripts (url file name) that ran longest (inclusive time of their calls)."""

    span_ms: float = 0.0
    busy_ms: float = 0.0  # inside top-level tasks
    by_kind: Counter = field(default_factory=Counter)
    tasks: int = 0
    long_tasks: int = 0  # over 50 ms: the page cannot take input meanwhile
    longest_ms: float = 0.0
    scripts: Counter = field(default_factory=Counter)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {v:.0f}" for k, v in self.by_kind.most_common())
        top = ", ".join(f"{k} {v:.0f}" for k, v in self.scripts.most_common(4))
        return (f"main thread busy {self.busy_ms:.0f} of {self.span_ms:.0f} ms ({kinds}); {self.tasks} tasks, "
                f"{self.long_tasks} over 50 ms, longest {self.longest_ms:.0f} ms; script by file: {top}")


def summarize(trace: dict | list) -> MainThread:
    """Busy time of the renderer's main thread (CrRendererMain) in a Chrome trace, by kind."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    main = {(e["pid"], e["tid"]) for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name" and e["args"].get("name") == "CrRendererMain"}
    spans = [e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in main and "dur" in e]
    out = MainThread()
    if not spans:
        return out
    # the renderer that did the most (the notebook's page, not an idle one)
    per_thread = Counter()
    for e in spans:
        if e["name"] in TASK:
            per_thread[(e["pid"], e["tid"])] += e["dur"]
    thread = per_thread.most_common(1)[0][0] if per_thread else (spans[0]["pid"], spans[0]["tid"])
    spans = sorted((e for e in spans if (e["pid"], e["tid"]) == thread), key=lambda e: (e["ts"], -e["dur"]))
    out.span_ms = (max(e["ts"] + e["dur"] for e in spans) - spans[0]["ts"]) / 1000
    stack: list[list] = []  # [end, kind, child time]

    def close(until: float) -> None:
        while stack and stack[-1][0] <= until:
            end, kind, child, dur = stack.pop()
            if kind:
                out.by_kind[kind] += (dur - child) / 1000
            if stack:
                stack[-1][2] += dur

    for e in spans:
        close(e["ts"])
        name, dur = e["name"], e["dur"]
        if name in TASK and not stack:
            out.tasks += 1
            out.busy_ms += dur / 1000
            out.longest_ms = max(out.longest_ms, dur / 1000)
            out.long_tasks += dur > 50_000
        kind = _KIND_OF.get(name)
        if kind is None and stack:  # an unnamed inner event counts as its parent's kind
            kind = stack[-1][1]
        if name == "FunctionCall":
            url = (e.get("args", {}).get("data", {}) or {}).get("url", "") or "?"
            out.scripts[url.rsplit("/", 1)[-1].split("?")[0][:40] or "?"] += dur / 1000
        stack.append([e["ts"] + dur, kind, 0, dur])
    close(float("inf"))
    out.by_kind["other"] = max(0.0, out.busy_ms - sum(out.by_kind.values()))
    return out


@contextmanager
def traced(page, result: list, save: str | None = None):
    """Trace ``page`` while the block runs; append the MainThread summary to ``result``; with
    ``save``, also write the trace there (it opens in Chrome's DevTools Performance panel)."""
    browser = page.context.browser
    browser.start_tracing(page=page, categories=CATEGORIES, screenshots=False)
    try:
        yield
    finally:
        data = browser.stop_tracing()
        if save:
            with open(save, "wb") as f:
                f.write(data)
        result.append(summarize(json.loads(data)))
