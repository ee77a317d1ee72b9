"""During a drag the heavy views redraw a few times a second and always draw the final state."""

from __future__ import annotations

from prunelab.explorer.views.pacing import Pacer


class Clock:
    def __init__(self):
        self.now = 0.0
        self.timers = []

    def __call__(self):
        return self.now

    def later(self, key, delay, fn):
        self.timers.append((self.now + delay, fn))

    def advance(self, seconds):
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if t[0] <= end), key=lambda t: t[0])
            if not due:
                break
            self.timers.remove(due[0])
            self.now = due[0][0]
            due[0][1]()
        self.now = end


def test_a_burst_of_states_draws_the_first_a_few_a_second_and_the_last():
    clock, drawn, state = Clock(), [], {"value": 0}
    pacer = Pacer(lambda: drawn.append(state["value"]), later=clock.later, key="v", interval=0.3, clock=clock)
    for i in range(1, 25):  # 24 states, one every 40 ms (a 1 s drag)
        state["value"] = i
        pacer.request()
        clock.advance(0.04)
    clock.advance(1.0)  # released
    assert drawn[0] == 1 and drawn[-1] == 24  # the first at once, the final state always
    assert len(drawn) <= 1 + 1.0 / 0.3 + 1  # not 24 redraws
    assert drawn == sorted(drawn)


def test_a_lone_change_draws_at_once_and_without_a_loop_every_change_draws():
    clock, drawn = Clock(), []
    pacer = Pacer(lambda: drawn.append(clock.now), later=clock.later, clock=clock)
    pacer.request()
    assert drawn == [0.0] and not clock.timers
    now = []
    Pacer(lambda: now.append(1)).request()
    assert now == [1]
