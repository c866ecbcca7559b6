"""The one throttle behind the panel's hub and the dashboard (gradsight/throttle.py), on a fake clock."""

from gradsight.throttle import ThrottledSubscriber


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(cost=0.0, **kw):
    clock, shown = Clock(), []

    def show(w, fresh):
        shown.append((w, fresh))
        clock.t += cost

    return ThrottledSubscriber(show, clock=clock, **kw), clock, shown


def test_steps_inside_the_interval_are_held_and_the_flush_shows_the_last():
    th, clock, shown = make(min_interval=1.0)
    for step in range(5):
        th.step(step)
        clock.t += 0.3
    assert shown == [(0, False), (4, False)]  # 0 at t=0, 4 at t=1.2; 1-3 held back then replaced
    th.step(5)
    assert th.pending == 5
    th.flush()
    assert shown[-1] == (5, True) and th.pending is None
    th.flush()  # nothing held: nothing shown (the dashboard's setting)
    assert len(shown) == 3


def test_flush_shown_reshows_the_last_live_step_fresh():
    th, _, shown = make(min_interval=1.0, flush_shown=True)
    th.step("w")
    th.flush()
    assert shown == [("w", False), ("w", True)]


def test_a_slow_show_spaces_the_next_ones_within_bounds():
    th, _, _ = make(cost=0.2, min_interval=0.1, max_share=0.05, max_interval=3.0)
    th.step("w")
    assert th.interval == 3.0  # 0.2 / 0.05 = 4 s, capped
    th, _, _ = make(cost=0.01, min_interval=0.1, max_share=0.05)
    th.step("w")
    assert abs(th.interval - 0.2) < 1e-12


def test_forget_drops_references_to_a_closed_watcher_only():
    th, _, shown = make(min_interval=10.0, flush_shown=True)
    th.step("a")
    th.step("b")
    th.forget("a")
    assert th.pending == "b"
    th.forget("b")
    th.flush()
    assert shown == [("a", False)]
