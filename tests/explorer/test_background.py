"""The scheduler keeps the kernel responsive: coalesced main-thread work, debounced timers,
background jobs whose superseded results are dropped."""

import asyncio
import threading
import time

import pytest

from prunelab.explorer.background import Scheduler


def test_without_a_loop_work_runs_now_and_wait_delivers():
    calls, busy = [], []
    s = Scheduler(on_busy=lambda labels, fraction: busy.append(list(labels)))
    s.soon("a", lambda: calls.append("soon"))
    assert calls == ["soon"]
    s.later("t", 10.0, lambda: calls.append("timer"))
    assert calls == ["soon"] and s.busy
    s.submit("job", "working", lambda progress: threading.current_thread().name, calls.append)
    s.wait(timeout=10)
    assert calls == ["soon", "timer", "prunelab-explorer_0"]  # the job ran on the worker thread
    assert busy[0] == ["working"] and busy[-1] == []
    assert not s.busy
    s.close()


def test_a_newer_job_with_the_same_key_drops_the_older_result():
    results = []
    s = Scheduler()
    gate = threading.Event()
    s.submit("k", "slow", lambda progress: gate.wait(5) and "old", results.append)
    s.submit("k", "new", lambda progress: "new", results.append)
    gate.set()
    s.wait(timeout=10)
    assert results == ["new"]
    s.close()


@pytest.mark.parametrize("stop", ["newer job", "close"])
def test_a_running_job_stops_at_its_next_progress_report_once_superseded_or_closed(stop):
    steps, results, failures = [], [], []
    s = Scheduler()
    started = threading.Event()

    def long_work(progress):  # a scoring pass: many batches, a report after each
        for i in range(400):
            started.set()
            time.sleep(0.005)
            steps.append(i)
            progress(i / 400)
        return "finished"

    job = s.submit("k", "long", long_work, results.append, failures.append)
    assert started.wait(5)
    if stop == "close":
        s.close()
    else:
        s.submit("k", "new", lambda progress: "new", results.append)
    time.sleep(0.2)
    ran = len(steps)
    time.sleep(0.2)
    assert ran == len(steps) and ran < 100  # it stopped (400 steps would take 2 s)
    if stop == "newer job":
        s.wait(timeout=10)
        assert results == ["new"] and failures == []  # the old job's end is neither a result nor an error
        s.close()
    assert job == 1


def test_failures_reach_the_failure_callback():
    errors = []
    s = Scheduler()

    def boom(progress):
        raise ValueError("nope")

    s.submit("k", "failing", boom, lambda r: pytest.fail("no result expected"), errors.append)
    s.wait(timeout=10)
    assert len(errors) == 1 and str(errors[0]) == "nope"
    s.close()


def test_inside_an_event_loop_work_is_coalesced_debounced_and_posted_back():
    async def main():
        s = Scheduler()
        assert s.live
        ran, timers, done = [], [], []
        for i in range(5):  # five changes in one turn of the loop: one refresh
            s.soon("refresh", lambda i=i: ran.append(i))
        assert ran == []
        for i in range(3):  # a drag: only the last timer fires
            s.later("settle", 0.05, lambda i=i: timers.append(i))
        main_thread = threading.current_thread()
        s.submit("job", "x", lambda progress: 42, lambda r: done.append((r, threading.current_thread())))
        deadline = time.monotonic() + 10
        while not (done and timers) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        s.close()
        return ran, timers, done, main_thread

    ran, timers, done, main_thread = asyncio.run(main())
    assert ran == [4] and timers == [2]
    assert done == [(42, main_thread)]  # the result is handed over on the loop's thread


def test_posts_from_other_threads_run_on_the_loop_in_order_and_a_drag_collapses():
    async def main():
        s = Scheduler()
        ran = []

        def gesture(key, value):
            s.post(key, lambda: ran.append((key, value, threading.current_thread() is threading.main_thread())))

        def subshell():  # JupyterLab delivers widget messages on a thread of their own
            for v in range(5):
                gesture("global", v)
            gesture("layer", 1)
            gesture("global", 9)

        t = threading.Thread(target=subshell)
        t.start()
        t.join()
        while len(ran) < 3:
            await asyncio.sleep(0.01)
        s.close()
        return ran

    assert asyncio.run(main()) == [("global", 4, True), ("layer", 1, True), ("global", 9, True)]


def test_a_failing_post_does_not_stop_the_queue(capsys):
    async def main():
        s = Scheduler()
        ran = []
        s.post("a", lambda: 1 / 0)
        s.post("b", lambda: ran.append("b"))
        await asyncio.sleep(0.05)
        s.post("c", lambda: ran.append("c"))
        await asyncio.sleep(0.05)
        return ran

    assert asyncio.run(main()) == ["b", "c"]
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_wait_inside_a_running_loop_runs_what_the_loop_would_run_next():
    async def main():
        s = Scheduler()
        ran = []
        s.post("action", lambda: (ran.append("action"), s.soon("refresh", lambda: ran.append("refresh"))))
        s.later("settle", 30.0, lambda: s.submit("job", "j", lambda progress: "result", ran.append))
        s.wait(timeout=10)  # a notebook cell that waits: the loop itself is blocked meanwhile
        s.close()
        return ran

    assert asyncio.run(main()) == ["action", "refresh", "result"]


def test_call_from_another_thread_runs_on_the_main_thread_through_the_loop_it_adopted():
    # A panel on its own may be made before its loop runs; its clicks and a run's results reach
    # the main thread through Scheduler.call, which adopts the loop on its first call inside it.
    s = Scheduler()  # no loop yet
    ran_on = []

    async def scenario():
        s.call(lambda: ran_on.append("adopted"))  # on the main thread, inside the loop: at once
        worker = threading.Thread(target=lambda: s.call(lambda: ran_on.append(threading.current_thread())))
        worker.start()
        worker.join()
        while len(ran_on) < 2:
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert ran_on == ["adopted", threading.main_thread()]
    s.close()


def test_call_without_a_loop_queues_calls_from_other_threads_until_drained():
    s = Scheduler()
    ran = []
    s.call(lambda: ran.append("here"))  # on its own thread: at once
    worker = threading.Thread(target=lambda: s.call(lambda: ran.append(threading.current_thread())))
    worker.start()
    worker.join()
    assert ran == ["here"] and s.busy
    s.drain()
    assert ran == ["here", threading.main_thread()] and not s.busy
    s.close()


def test_call_runs_at_once_on_the_main_thread_even_inside_a_loop():
    async def main():
        s = Scheduler()
        ran = []
        s.call(lambda: ran.append("call"))  # at once
        s.post("p", lambda: ran.append("post"))  # waits for the loop
        first = list(ran)
        await asyncio.sleep(0.02)
        s.close()
        return first, ran

    assert asyncio.run(main()) == (["call"], ["call", "post"])
