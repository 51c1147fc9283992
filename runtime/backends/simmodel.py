"""The simulated LLM server's pure model: reply texts and a capacity/latency model. No Ray, no asyncio.

Used by the in-cluster sim service and by an HTTP OpenAI-compatible sim server. Replies are
deterministic functions of the step's seed key; latency follows a continuous-batching model.

Serving one request with `SimCapacity` from an asyncio server (tickets are futures)::

    def wake(grants):                       # hand freed slots to queued requests, FIFO
        for fut, r in grants:
            if fut.cancelled():
                wake(cap.release(r))        # its waiter left: pass the slot on
            else:
                fut.set_result(r)

    fut = loop.create_future()
    replica = cap.acquire(fut)              # a replica index, or None: queued FIFO behind others
    if replica is None:
        try:
            replica = await fut
        except asyncio.CancelledError:
            if not cap.cancel(fut) and fut.done() and not fut.cancelled():
                wake(cap.release(fut.result()))   # granted just as we were cancelled
            raise
    try:
        await asyncio.sleep(cap.duration(tokens, cap.active(replica)))
    finally:
        wake(cap.release(replica))
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

# A small vocabulary for filler replies: plain words, roughly one token each.
FILLER_WORDS = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "with", "was", "on", "be", "by",
    "this", "are", "or", "from", "at", "which", "an", "have", "not", "we", "can", "but", "all", "so",
    "if", "one", "more", "when", "will", "there", "their", "what", "about", "would", "these", "other",
    "into", "some", "time", "only", "then", "also", "two", "may", "first", "such", "like", "its",
    "over", "each", "where", "most", "model", "answer", "step", "reason", "because", "therefore",
    "consider", "option", "value", "result", "check", "case", "given", "thus", "number", "note",
)


def filler_text(tokens: int, seed_key: str) -> str:
    """`tokens` space-separated words drawn deterministically from `seed_key`."""
    if tokens <= 0:
        return ""
    rng = random.Random(f"{seed_key}:filler")
    return " ".join(rng.choices(FILLER_WORDS, k=tokens))


def sim_reply(sim_text: str | None, tokens: int, seed_key: str) -> str:
    """The simulated reply: the agent's rendered `sim` template when it has one (LLMCall.sim_text),
    else filler text of `tokens` words deterministic in the seed key (LLMCall.sim_tokens/seed_key)."""
    return sim_text if sim_text is not None else filler_text(tokens, seed_key)


@dataclass(slots=True)
class _Replica:
    active: int = 0
    served: int = 0


class SimCapacity:
    """Bookkeeping for `replicas` simulated replicas of `max_concurrency` concurrent sequences each.

    - `acquire(ticket)`: admit a request on the least-loaded replica with a free slot (returns its
      index) unless the replicas are full or others are already waiting; then queue `ticket` FIFO and
      return None.
    - `release(replica)`: free a slot; returns the `(ticket, replica)` grants of queued requests that
      now take the freed slot (at most one), to be woken by the caller.
    - `duration(tokens, active)`: seconds to serve a request of `tokens` completion tokens when its
      replica decodes `active` sequences (itself included):
      `ttft_s + tokens * per_token_s * (1 + slowdown * active / max_concurrency)`.
    - `cancel(ticket)`: drop a still-queued request; False when it is no longer queued.
    Not thread-safe: call from one thread/event loop.
    """

    __slots__ = ("replicas", "max_concurrency", "ttft_s", "per_token_s", "slowdown", "_reps", "_queue")

    def __init__(self, replicas: int, max_concurrency: int, ttft_s: float, per_token_s: float,
                 slowdown: float = 0.5) -> None:
        if replicas < 1 or max_concurrency < 1:
            raise ValueError("replicas and max_concurrency must be >= 1")
        if ttft_s < 0 or per_token_s < 0 or slowdown < 0:
            raise ValueError("ttft_s, per_token_s and slowdown must be >= 0")
        self.replicas, self.max_concurrency = replicas, max_concurrency
        self.ttft_s, self.per_token_s, self.slowdown = ttft_s, per_token_s, slowdown
        self._reps = [_Replica() for _ in range(replicas)]
        self._queue: deque[Hashable] = deque()

    @classmethod
    def from_sim(cls, sim: dict, slowdown: float = 0.5) -> SimCapacity:
        """From an IR model's `sim` block."""
        return cls(sim["replicas"], sim["max_concurrency"], sim["ttft_s"], sim["per_token_s"], slowdown)

    def acquire(self, ticket: Hashable) -> int | None:
        if not self._queue:
            r = self._free_replica()
            if r is not None:
                self._admit(r)
                return r
        self._queue.append(ticket)
        return None

    def release(self, replica: int) -> list[tuple[Hashable, int]]:
        rep = self._reps[replica]
        if rep.active <= 0:
            raise ValueError(f"release of replica {replica} with no active request")
        rep.active -= 1
        grants = []
        while self._queue:
            r = self._free_replica()
            if r is None:
                break
            ticket = self._queue.popleft()
            self._admit(r)
            grants.append((ticket, r))
        return grants

    def cancel(self, ticket: Hashable) -> bool:
        try:
            self._queue.remove(ticket)
            return True
        except ValueError:
            return False

    def duration(self, tokens: int, active: int) -> float:
        return self.ttft_s + tokens * self.per_token_s * (1.0 + self.slowdown * active / self.max_concurrency)

    def active(self, replica: int) -> int:
        return self._reps[replica].active

    def served(self, replica: int) -> int:
        """Requests admitted on this replica so far."""
        return self._reps[replica].served

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return sum(r.active for r in self._reps)

    def _free_replica(self) -> int | None:
        best, best_active = None, self.max_concurrency
        for i, rep in enumerate(self._reps):
            if rep.active < best_active:
                best, best_active = i, rep.active
        return best

    def _admit(self, r: int) -> None:
        self._reps[r].active += 1
        self._reps[r].served += 1
