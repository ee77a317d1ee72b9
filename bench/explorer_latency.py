"""Explorer responsiveness on the digits demo (digits-mlp).

1. Opening: ``pl.explore("digits-mlp")`` in a fresh process (the first call imports bokeh and
   ipywidgets), until the widget is built, then until the background work (Taylor and captum
   attribution scores, IntegratedGradients attributions) has landed in the views.
2. Slider latency, as in a kernel (the explorer runs inside an asyncio loop, so refreshes are
   deferred and coalesced exactly as there): from setting a slider's value until the metrics
   readout, the connectivity graph and the weight histogram have all been updated (their widget
   messages recorded). A drag of the global slider 0% -> 95% -> 0% in 1% steps, and a per-layer
   slider. Target: median <= 50 ms.
3. Baseline in the same run, interleaved move by move: an independent Pruner alone (prune +
   evaluate) for the same values, to show what the explorer adds.

Run: python bench/explorer_latency.py
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np


def stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):6.1f} ms   p90 {np.percentile(a, 90):6.1f} ms   max {a.max():6.1f} ms   (n={len(a)})"


async def main():
    t0 = time.perf_counter()
    import prunelab as pl

    t1 = time.perf_counter()
    ex = pl.explore("digits-mlp")
    t2 = time.perf_counter()
    ex.wait()
    t3 = time.perf_counter()
    import torch

    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}, torch threads "
          f"{torch.get_num_threads()}")
    print("opening digits-mlp")
    print(f"  import prunelab                          {t1 - t0:6.2f} s")
    print(f"  pl.explore('digits-mlp') -> widget built {t2 - t1:6.2f} s")
    print(f"  ... and attribution, Taylor, IG shown    {t3 - t1:6.2f} s   (target < 5 s)")
    assert set(ex.state.scores) == {"magnitude", "taylor", "attribution"} and ex.state.explanations is not None

    # when each view last drew: the paced views (connectivity, weights, importance, per-class
    # accuracy) when their redraw ran, the trace when it sent its patch, the readout when it changed.
    # The clock of a move stops when the LAST of them has updated.
    last: dict[str, float] = {}
    paced = ("connectivity", "weights", "importance", "interpretability")
    for name in paced:
        pacer = ex.views[name].pacer
        redraw = pacer.fn

        def timed(_name=name, _redraw=redraw):
            _redraw()
            last[_name] = time.perf_counter()

        pacer.fn = timed
    trace = ex.views["metrics"].bokeh
    original = trace.send
    trace.send = lambda *a, **k: (last.__setitem__("trace", time.perf_counter()), original(*a, **k))[1]
    ex.views["metrics"].readout.observe(lambda c: last.__setitem__("readout", time.perf_counter()), "value")
    everything = {"readout", *paced}  # the trace sends only for a state not visited before

    async def move(slider, value: float) -> float:
        last.clear()
        start = time.perf_counter()
        revision = ex.state.revision
        slider.value = value
        while ex.state.revision == revision:  # the refresh runs on the loop, as in a kernel
            await asyncio.sleep(0)
        while set(last) < everything and time.perf_counter() - start < 2.0:  # paced views come later
            await asyncio.sleep(0.001)
        missing = everything - set(last)
        if missing:
            raise AssertionError(f"after moving to {value}: {missing} not updated within 2 s")
        accuracy = f"{ex.pruner.evaluate().accuracy:.1%}"
        if accuracy not in ex.views["metrics"].readout.value:
            raise AssertionError(f"readout does not show {accuracy}")
        return (max(last.values()) - start) * 1000

    # The baseline runs interleaved with the explorer's moves (same load on this shared machine):
    # an independent Pruner of the same demo, moved to the same values, with no explorer.
    demo = pl.demos.load("digits-mlp")
    bare = pl.Pruner(demo.model, demo.val, train_data=demo.train)
    bare.evaluate()

    def bare_move(amounts) -> float:
        start = time.perf_counter()
        bare.prune(amounts)
        bare.evaluate()
        return (time.perf_counter() - start) * 1000

    drag = [round(v, 2) for v in np.r_[np.arange(0.01, 0.96, 0.01), np.arange(0.94, -0.005, -0.01)]]
    global_ms, base_ms = [], []
    for v in drag:
        global_ms.append(await move(ex.controls.global_slider, v))
        base_ms.append(bare_move(v))
    layer = [round(v, 2) for v in np.r_[np.arange(0.05, 0.96, 0.05), np.arange(0.9, -0.01, -0.05)]]
    ex.state.layer = "2"
    bare.reset()
    layer_ms, layer_base_ms = [], []
    for v in layer:
        layer_ms.append(await move(ex.controls.layer_sliders["2"], v))
        layer_base_ms.append(bare_move({"2": v}))
    ex.close()

    print("slider change -> the last of the readout, trace, connectivity, weights, importance, per-class views updated")
    print(f"  global slider drag     {stats(global_ms)}")
    print(f"    Pruner alone         {stats(base_ms)}   (prune + evaluate, same values, interleaved)")
    print(f"  layer '2' slider       {stats(layer_ms)}")
    print(f"    Pruner alone         {stats(layer_base_ms)}")
    print(f"  explorer / Pruner alone, medians: global {np.median(global_ms) / np.median(base_ms):.2f}x, "
          f"layer {np.median(layer_ms) / np.median(layer_base_ms):.2f}x")
    ok = np.median(global_ms) <= 50 and np.median(layer_ms) <= 50
    print(f"target median <= 50 ms: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    asyncio.run(main())
