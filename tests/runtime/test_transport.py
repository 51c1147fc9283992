"""The coalescing outbox against real Ray actors: batching under load, lone sends, acks, failures."""

from __future__ import annotations

import asyncio
import random

import pytest
import ray
from matrixlang.runtime.transport.outbox import Outbox, pack, pick_two, unpack

pytestmark = pytest.mark.ray


@ray.remote(num_cpus=0)
class Recorder:
    """Receives batches; optionally slow, so that calls stay in flight while the sender sends more."""

    def __init__(self, delay_s: float = 0.0, load: int = 0):
        self.batches: list[list] = []
        self.delay_s, self.load = delay_s, load

    async def deliver(self, batch: bytes | list) -> int:
        self.batches.append(unpack(batch))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.load

    def seen(self) -> list[list]:
        return self.batches


def test_lone_message_is_sent_in_the_same_tick_alone(ray_local):
    rec = Recorder.remote()

    async def main() -> tuple[int, int]:
        box = Outbox()
        box.send("r", rec, "only")
        await asyncio.sleep(0)            # one loop iteration: the call must be issued by now
        calls_after_one_tick = box.stats.calls
        await box.drain()
        return calls_after_one_tick, box.outstanding("r")

    calls, outstanding = asyncio.run(main())
    assert calls == 1
    assert outstanding == 0
    assert ray.get(rec.seen.remote()) == [["only"]]


def test_coalescing_under_load_batches_and_delivers_everything_once(ray_local):
    rec = Recorder.remote(delay_s=0.02)

    async def main() -> dict:
        box = Outbox()
        for i in range(400):
            box.send("r", rec, i)
            if i % 4 == 0:
                await asyncio.sleep(0)    # senders spread over many ticks, as agents are
        await box.drain()
        return box.stats.as_dict()

    stats = asyncio.run(main())
    batches = ray.get(rec.seen.remote())
    assert sorted(x for b in batches for x in b) == list(range(400))
    assert stats["items"] == 400
    assert stats["max_batch"] > 1
    assert stats["calls"] < 400 // 4       # far fewer calls than items
    assert sum(1 for b in batches if len(b) > 1) >= 1


def test_without_coalescing_every_item_is_its_own_call(ray_local):
    rec = Recorder.remote(delay_s=0.005)

    async def main() -> dict:
        box = Outbox(coalesce=False)
        for i in range(50):
            box.send("r", rec, i)
        await box.drain()
        return box.stats.as_dict()

    stats = asyncio.run(main())
    assert stats["calls"] == 50 and stats["max_batch"] == 1
    assert sorted(x for b in ray.get(rec.seen.remote()) for x in b) == list(range(50))


def test_acks_carry_the_receiver_load_and_release_items(ray_local):
    rec = Recorder.remote(load=7)
    acked: list = []

    async def main() -> int:
        box = Outbox(on_ack=lambda dest, batch, load: acked.append((dest, list(batch), load)))
        box.send("r", rec, "a")
        box.send("r", rec, "b")
        await box.drain()
        return box.load("r")

    assert asyncio.run(main()) == 7
    assert acked == [("r", ["a", "b"], 7)]


def test_a_dead_receiver_hands_the_batch_back(ray_local):
    rec = Recorder.remote()
    ray.get(rec.seen.remote())
    ray.kill(rec, no_restart=True)
    failed: list = []

    async def main() -> None:
        box = Outbox(on_error=lambda dest, batch, exc: failed.append((dest, list(batch), type(exc))))
        box.send("r", rec, "x")
        await box.drain()

    asyncio.run(main())
    assert len(failed) == 1
    dest, batch, exc_type = failed[0]
    assert (dest, batch) == ("r", ["x"])
    assert issubclass(exc_type, ray.exceptions.RayActorError)


def test_pick_two_prefers_the_less_loaded():
    loads = {"a": 10, "b": 0}
    rng = random.Random(1)
    assert {pick_two(["a", "b"], loads.__getitem__, rng) for _ in range(20)} == {"b"}
    assert pick_two(["only"], loads.get, rng) == "only"
    three = {"a": 5, "b": 1, "c": 9}
    picks = [pick_two(list(three), three.__getitem__, rng) for _ in range(200)]
    assert "c" not in picks           # c loses every pair it is drawn in
    assert picks.count("b") > picks.count("a")


def test_pack_round_trip():
    batch = [{"id": 1, "text": "é" * 3}, ("req", 2, None), "line"]
    assert unpack(pack(batch)) == batch
    assert unpack(batch) is batch              # plain lists pass through


def test_the_protocol_names_methods_its_receivers_have():
    """Each one-way method of transport/protocol.py is a method of the actors that receive it."""
    from matrixlang.runtime.actors.agent import AgentActor
    from matrixlang.runtime.actors.coordinator import Coordinator
    from matrixlang.runtime.actors.sim_service import SimService
    from matrixlang.runtime.actors.sink import Sink
    from matrixlang.runtime.transport import protocol as p

    receivers = {p.DELIVER: (AgentActor, Coordinator, Sink), p.SUBMIT: (SimService,), p.REPLIES: (AgentActor,),
                 p.FETCH: (Sink,), p.FETCHED: (AgentActor,), p.OFFLOAD: (Sink,)}
    for method, actors in receivers.items():
        for actor in actors:
            cls = actor.__ray_actor_class__
            assert callable(getattr(cls, method, None)), (cls.__name__, method)
