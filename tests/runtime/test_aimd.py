"""runtime/backends/aimd.py: the arithmetic of the adaptive limit (a fake clock) and its slots (a real event loop)."""

from __future__ import annotations

import asyncio
import time

import pytest
from matrixlang.runtime.backends.aimd import AdaptiveLimit


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def limit_with(in_flight: int, max_limit: int = 64, **kw) -> tuple[AdaptiveLimit, Clock]:
    clock = Clock()
    lim = AdaptiveLimit(max_limit, clock=clock, **{"decrease": 0.5, **kw})
    for _ in range(in_flight):
        lim._take()
    return lim, clock


def test_starts_open_and_halves_what_is_in_flight_once_per_window():
    lim, clock = limit_with(10)
    assert lim.limit == 64
    sent_before = clock()
    clock.t += 1
    lim.on_overload(sent_before)
    assert lim.limit == 5 and lim.decreases == 1               # half of the 10 in flight, not of 64
    lim.on_overload(sent_before)                                # a call already in flight at the cut
    lim.on_overload(sent_before)
    assert lim.limit == 5 and lim.decreases == 1
    clock.t += 1
    lim.on_overload(clock())                                    # a call sent after the cut: cut again
    assert lim.limit == 2
    for _ in range(5):
        clock.t += 1
        lim.on_overload(clock())
    assert lim.limit == 1 and lim.min_limit == 1                # never below the floor


def test_grows_by_one_per_limit_of_successes_only_when_the_limit_is_used():
    lim, clock = limit_with(8, max_limit=10, increase_after=1)
    lim.on_overload(clock())
    assert lim.limit == 4
    for _ in range(8 - 4):
        lim.release()                                           # 4 in flight: the limit is reached
    lim._peak = 4
    clock.t += 1
    for _ in range(3):
        lim.on_success(0.1, clock())
    assert lim.limit == 4
    lim.on_success(0.1, clock())
    assert lim.limit == 5 and lim.increases == 1                # +1 after `limit` successes
    for _ in range(2):
        lim.release()                                           # 2 in flight: the limit of 5 is not used
    lim._peak = 2
    for _ in range(20):
        lim.on_success(0.1, clock())
    assert lim.limit == 5                                       # an unused limit does not grow
    for _ in range(8):
        lim._take()
    for _ in range(200):
        lim.on_success(0.1, clock())
    assert lim.limit == 10                                      # capped at max_limit


def test_a_small_limit_grows_by_one_per_increase_after_successes():
    lim, clock = limit_with(2, increase_after=8)
    lim.on_overload(clock())
    assert lim.limit == 1
    for _ in range(6):
        lim._take()                                             # the limit stays in use
    clock.t += 1
    grown = []
    for _ in range(24):
        lim.on_success(0.1, clock())
        grown.append(lim.limit)
    assert grown[6] == 1 and grown[7] == 2 and grown[15] == 3 and grown[23] == 4   # not +1 per success


def test_latency_well_above_its_baseline_cuts_the_limit():
    lim, clock = limit_with(20, latency_samples=50)
    for _ in range(100):
        lim.on_success(0.1, clock())
    assert lim.latency_decreases == 0 and lim.limit == 64       # steady latency: nothing happens
    limits = []
    for _ in range(30):
        lim.on_success(1.0, clock())                            # 10x slower, every call sent before the cut
        limits.append(lim.limit)
    assert lim.latency_decreases == 1 and lim.decreases == 1    # one cut for the whole slow stretch
    assert 10 in limits and min(limits) == 10                   # half of the 20 in flight


def test_retry_after_pauses_every_new_call_and_later_ones_queue_fifo():
    async def main():
        lim = AdaptiveLimit(4)
        sent = await lim.acquire()
        lim.on_overload(sent, retry_after=0.3)
        until = lim.paused_until
        lim.release()
        order: list[tuple[int, float]] = []

        async def call(i: int) -> None:
            await lim.acquire()
            order.append((i, lim.clock()))
            await asyncio.sleep(0.01)
            lim.release()

        await asyncio.gather(*(call(i) for i in range(6)))
        return order, until, lim

    order, until, lim = asyncio.run(main())
    assert [i for i, _ in order] == list(range(6))              # FIFO
    assert all(t >= until for _, t in order)                     # none started before the Retry-After ended
    assert lim.limit == 1 and lim.pauses == 1 and lim.in_flight == 0 and lim.waited == 6


def test_waiters_are_woken_when_a_pause_ends_before_its_timer_runs():
    async def main():
        lim = AdaptiveLimit(4)
        sent = await lim.acquire()
        lim.on_overload(sent, retry_after=0.05)
        lim.release()
        waiters = [asyncio.ensure_future(lim.acquire()) for _ in range(3)]
        await asyncio.sleep(0)                                  # they queue behind the pause
        time.sleep(0.1)                                         # the loop is busy until the pause is over
        lim.on_overload(sent)                                   # a late 429 of a call from before the cut
        granted = 0
        for w in waiters:
            await asyncio.wait_for(w, 10)
            granted += 1
            lim.release()
        return granted

    assert asyncio.run(main()) == 3


def test_a_cancelled_waiter_leaves_no_slot_taken():
    async def main():
        lim = AdaptiveLimit(1)
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert lim.snapshot()["waiting"] == 0
        lim.release()
        assert lim.free()
        await asyncio.wait_for(lim.acquire(), 10)
        return lim.in_flight

    assert asyncio.run(main()) == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        AdaptiveLimit(0)
    with pytest.raises(ValueError):
        AdaptiveLimit(4, decrease=1.0)
