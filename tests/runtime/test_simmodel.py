"""The simulated LLM's pure model: deterministic replies and the continuous-batching capacity model."""

from __future__ import annotations

import asyncio

import pytest
from matrixlang.runtime.backends.simmodel import FILLER_WORDS, SimCapacity, filler_text, sim_reply


def test_sim_reply_uses_the_rendered_template_verbatim() -> None:
    assert sim_reply("Answer: B", 500, "0:q1:0") == "Answer: B"
    assert sim_reply("", 5, "k") == ""


def test_filler_is_deterministic_sized_and_key_sensitive() -> None:
    a = sim_reply(None, 40, "0:q1:3")
    assert a == filler_text(40, "0:q1:3")
    words = a.split(" ")
    assert len(words) == 40 and set(words) <= set(FILLER_WORDS)
    assert a != sim_reply(None, 40, "0:q1:4") != sim_reply(None, 40, "1:q1:3")
    assert sim_reply(None, 0, "k") == ""


def test_duration_formula() -> None:
    cap = SimCapacity(replicas=1, max_concurrency=4, ttft_s=0.1, per_token_s=0.01)
    assert [cap.duration(100, a) for a in (0, 1, 2, 4)] == pytest.approx([1.1, 1.225, 1.35, 1.6])
    assert SimCapacity(1, 4, 0.1, 0.01, slowdown=0.0).duration(100, 4) == pytest.approx(1.1)


def test_acquire_balances_then_queues_fifo_and_release_grants_in_order() -> None:
    cap = SimCapacity(replicas=2, max_concurrency=2, ttft_s=0, per_token_s=0)
    assert [cap.acquire(t) for t in "abcd"] == [0, 1, 0, 1]       # least-loaded first
    assert (cap.in_flight, cap.queued) == (4, 0)
    assert [cap.acquire(t) for t in "efg"] == [None, None, None]
    assert cap.queued == 3
    assert cap.release(1) == [("e", 1)]
    assert cap.cancel("f") is True and cap.cancel("f") is False
    assert cap.release(0) == [("g", 0)]
    assert cap.release(0) == []
    assert cap.acquire("h") == 0                                   # free slot and nobody waiting
    assert (cap.active(0), cap.active(1), cap.queued) == (2, 2, 0)
    assert (cap.served(0), cap.served(1)) == (4, 3)
    with pytest.raises(ValueError, match="no active request"):
        SimCapacity(1, 1, 0, 0).release(0)


def test_queued_request_does_not_jump_ahead_of_earlier_waiters() -> None:
    cap = SimCapacity(replicas=1, max_concurrency=1, ttft_s=0, per_token_s=0)
    assert cap.acquire("a") == 0
    assert cap.acquire("b") is None
    assert cap.release(0) == [("b", 0)]
    assert cap.acquire("c") is None                                 # b holds the slot now
    assert cap.release(0) == [("c", 0)]


def test_from_sim_block() -> None:
    cap = SimCapacity.from_sim({"tokens": [1, 2], "ttft_s": 0.5, "per_token_s": 0.25, "max_concurrency": 3,
                                "replicas": 2})
    assert (cap.replicas, cap.max_concurrency, cap.ttft_s, cap.per_token_s) == (2, 3, 0.5, 0.25)


async def _serve(cap: SimCapacity, tokens: int, log: list, name: str, peak: list[int]) -> int:
    """The asyncio pattern documented in simmodel's docstring."""
    loop = asyncio.get_running_loop()

    def wake(grants: list) -> None:
        for fut, r in grants:
            if fut.cancelled():
                wake(cap.release(r))
            else:
                fut.set_result(r)

    fut = loop.create_future()
    replica = cap.acquire(fut)
    if replica is None:
        try:
            replica = await fut
        except asyncio.CancelledError:
            if not cap.cancel(fut) and fut.done() and not fut.cancelled():
                wake(cap.release(fut.result()))
            raise
    log.append(name)
    peak[0] = max(peak[0], cap.in_flight)
    try:
        await asyncio.sleep(cap.duration(tokens, cap.active(replica)))
    finally:
        wake(cap.release(replica))
    return replica


def test_asyncio_server_pattern_bounds_concurrency_keeps_fifo_and_survives_cancellation() -> None:
    async def main() -> tuple[list[str], list[int], SimCapacity]:
        cap = SimCapacity(replicas=2, max_concurrency=2, ttft_s=0.0, per_token_s=0.001)
        log: list[str] = []
        peak = [0]
        tasks = [asyncio.create_task(_serve(cap, 5, log, f"r{i}", peak)) for i in range(12)]
        await asyncio.sleep(0)               # all 12 have tried to acquire: 4 run, 8 wait
        assert (cap.in_flight, cap.queued) == (4, 8)
        tasks[6].cancel()                    # a waiter leaves the queue
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[6], asyncio.CancelledError)
        served = [r for r in results if not isinstance(r, BaseException)]
        assert len(served) == 11 and set(served) == {0, 1}
        return log, peak, cap

    log, peak, cap = asyncio.run(main())
    assert log == [f"r{i}" for i in range(12) if i != 6]       # admitted in arrival order
    assert peak[0] == 4
    assert (cap.in_flight, cap.queued) == (0, 0)
