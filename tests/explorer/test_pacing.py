"""During a drag the heavy views wait for it to pause (at most a second while it goes on) and
always draw the final state; the readout follows at once, a few dozen times a second at most."""

from __future__ import annotations

from prunelab.explorer.views.pacing import Pacer


class Clock:
    """A fake clock with ``later`` as the Scheduler's: a debounce by key (a newer request for a key
    replaces its pending timer)."""

    def __init__(self):
        self.now = 0.0
        self.timers = {}

    def __call__(self):
        return self.now

    def later(self, key, delay, fn):
        self.timers[key] = (self.now + delay, fn)

    def advance(self, seconds):
        end = self.now + seconds
        while True:
            due = sorted(((t, k) for k, (t, _) in self.timers.items() if t <= end))
            if not due:
                break
            at, key = due[0]
            fn = self.timers.pop(key)[1]
            self.now = at
            fn()
        self.now = end


def drag(pacer, state, clock, states=24, every=0.04):
    for i in range(1, states + 1):  # one state every 40 ms: a hand's drag
        state["value"] = i
        pacer.request()
        clock.advance(every)


def test_a_heavy_view_draws_a_hand_drag_once_with_its_final_state():
    clock, drawn, state = Clock(), [], {"value": 0}
    pacer = Pacer(lambda: drawn.append((clock.now, state["value"])), later=clock.later, key="v", clock=clock)
    drag(pacer, state, clock)  # 0.96 s
    clock.advance(1.0)  # released
    assert [v for _, v in drawn] == [24]  # nothing while the hand moved, then the final state
    assert drawn[0][0] <= 23 * 0.04 + pacer.settle + 1e-9  # soon after the last state


def test_a_long_drag_draws_about_once_a_second_and_the_final_state():
    clock, drawn, state = Clock(), [], {"value": 0}
    pacer = Pacer(lambda: drawn.append(state["value"]), later=clock.later, key="v", clock=clock)
    drag(pacer, state, clock, states=100)  # 4 s
    clock.advance(1.0)
    assert 2 <= len(drawn) <= 4 + 1 and drawn[-1] == 100 and drawn == sorted(drawn)


def test_a_lone_change_draws_once_it_settles_and_without_a_loop_every_change_draws():
    clock, drawn = Clock(), []
    pacer = Pacer(lambda: drawn.append(clock.now), later=clock.later, clock=clock)
    pacer.request()
    clock.advance(1.0)
    assert drawn == [pacer.settle]
    now = []
    Pacer(lambda: now.append(1)).request()
    assert now == [1]


def test_the_readout_pacing_draws_at_once_and_then_at_most_every_interval():
    clock, drawn, state = Clock(), [], {"value": 0}
    pacer = Pacer(lambda: drawn.append(state["value"]), later=clock.later, key="r", interval=0.05, settle=0.0,
                  clock=clock)
    state["value"] = 1
    pacer.request()
    assert drawn == [1]  # at once
    drag(pacer, state, clock, states=24, every=0.02)
    clock.advance(0.5)
    assert drawn[-1] == 24 and len(drawn) <= 1 + 24 * 0.02 / 0.05 + 2
