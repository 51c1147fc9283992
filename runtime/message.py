"""The orchestrator message: one per input row, carrying the row's whole state from agent to agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUNNING, OK, FAILED, ERROR = "running", "ok", "failed", "error"
FINISHED_STATUSES = frozenset((OK, FAILED, ERROR))


@dataclass(slots=True)
class Message:
    """docs/ir.md "The orchestrator message". Picklable; `position` is the 0-based input position.

    `history` entries are `{"agent", "text"}` inline or `{"agent", "ref", "bytes", "preview"}` when the
    Ray layer has offloaded the text; `values[AGENT]` is `{"entry": history index, EXTRACT..., "exit_code"}`.
    A finished message has `status` ok/failed/error and `state` "end" (ok) or "fail" (otherwise).
    """

    id: str | int
    row: dict
    state: str
    status: str = RUNNING
    reason: str | None = None
    detail: str | None = None
    steps: int = 0
    visits: dict[str, int] = field(default_factory=dict)
    values: dict[str, dict] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    usage: dict[str, dict] = field(default_factory=dict)
    timing: dict[str, float | None] = field(default_factory=lambda: {"admitted": None, "finished": None})
    attempt: int = 0
    position: int = 0

    @property
    def finished(self) -> bool:
        """True once the row reached end, fail, a limit or an error."""
        return self.status != RUNNING

    def to_dict(self) -> dict[str, Any]:
        """The message as plain JSON-able data (the shape of the IR's message_schema, plus position)."""
        return {
            "id": self.id, "row": self.row, "state": self.state, "status": self.status,
            "reason": self.reason, "detail": self.detail, "steps": self.steps,
            "visits": dict(self.visits), "values": {k: dict(v) for k, v in self.values.items()},
            "history": [dict(e) for e in self.history],
            "usage": {k: dict(v) for k, v in self.usage.items()},
            "timing": dict(self.timing), "attempt": self.attempt, "position": self.position,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        """Inverse of `to_dict`."""
        return cls(
            id=d["id"], row=d["row"], state=d["state"], status=d.get("status", RUNNING),
            reason=d.get("reason"), detail=d.get("detail"), steps=d.get("steps", 0),
            visits=dict(d.get("visits", {})), values={k: dict(v) for k, v in d.get("values", {}).items()},
            history=[dict(e) for e in d.get("history", [])],
            usage={k: dict(v) for k, v in d.get("usage", {}).items()},
            timing=dict(d.get("timing", {"admitted": None, "finished": None})),
            attempt=d.get("attempt", 0), position=d.get("position", 0),
        )
