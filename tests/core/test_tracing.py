"""fx tracing on one thread while another runs forward passes (the explorer's background jobs
trace their private copies while the kernel's thread measures): torch.fx patches nn.Module for
the whole process while it traces, so prunelab's passes and traces take turns."""

import threading
import time

import torch
from torch import nn

from prunelab.core.inputs import call
from prunelab.core.tracing import TRACING, symbolic_trace


def deep_model() -> nn.Module:
    return nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(30)])


def test_forward_passes_and_traces_on_two_threads_do_not_collide():
    model, other, x = deep_model(), deep_model(), torch.randn(4, 16)
    errors, passes = [], 0

    def trace_a_few_times():
        try:
            for _ in range(20):
                symbolic_trace(other)
        except Exception as e:  # reported below
            errors.append(e)

    worker = threading.Thread(target=trace_a_few_times)
    worker.start()
    try:
        while worker.is_alive() or passes < 50:
            call(model, x)
            passes += 1
    except Exception as e:
        errors.append(e)
    finally:
        worker.join()
    assert not errors, errors


def test_a_trace_waits_for_a_pass_on_another_thread_and_a_pass_for_a_trace():
    order, in_pass, release = [], threading.Event(), threading.Event()

    def a_pass():
        with TRACING.shared():
            in_pass.set()
            release.wait(5)
            order.append("pass done")

    t = threading.Thread(target=a_pass)
    t.start()
    in_pass.wait(5)
    tracer = threading.Thread(target=lambda: (symbolic_trace(nn.Linear(2, 2)), order.append("traced")))
    tracer.start()
    time.sleep(0.2)
    assert order == []  # the trace waits while the pass runs
    release.set()
    t.join(5), tracer.join(5)
    assert order == ["pass done", "traced"]


def test_the_tracing_thread_may_run_passes_and_a_passing_thread_may_trace():
    with TRACING.alone():
        with TRACING.shared():
            call(nn.Linear(2, 2), torch.zeros(1, 2))
    with TRACING.shared():
        symbolic_trace(nn.Linear(2, 2))
