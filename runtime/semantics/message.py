"""The orchestrator message: one per input row, carrying the row's whole state from agent to agent."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

RUNNING, OK, FAILED, ERROR = "running", "ok", "failed", "error"
FINISHED_STATUSES = frozenset((OK, FAILED, ERROR))
ID_FIELD, ID_POSITION, ID_DUPLICATE = "field", "position", "duplicate"   # where a row's id comes from
RUNTIME_KEYS = frozenset(("token_ids", "tokenizer"))   # history-entry keys outside the message schema


def without_runtime_keys(messages: list[dict]) -> list[dict]:
    """A call's messages as ``{role, content}``: without the ``token_ids`` and ``tokenizer`` a ``vllm``
    model's history messages carry (the same list when none has them)."""
    if not any(k in m for m in messages for k in RUNTIME_KEYS):
        return messages
    return [{k: v for k, v in m.items() if k not in RUNTIME_KEYS} for m in messages]


def id_key(row_id: Any) -> Hashable:
    """Dedup key of a row's own id (ids are str or int; anything else is keyed by its JSON text)."""
    if isinstance(row_id, (str, int)) and not isinstance(row_id, bool):
        return row_id
    return json.dumps(row_id, sort_keys=True)


def position_key(position: int, trial: int | None = None) -> Hashable:
    """Dedup key of a row known by its input position (and trial): a namespace of its own, apart from
    every id."""
    return ("#", position) if trial is None else ("#", position, trial)


def trial_id(row_id: str | int, trial: int | None) -> str | int:
    """The id of one trial of a row: ``ID#k`` (the row's id itself when it runs once)."""
    return row_id if trial is None else f"{row_id}#{trial}"


@dataclass(slots=True)
class Message:
    """docs/ir.md "The orchestrator message". Picklable; `position` is the 0-based input position.

    `history` entries are `{"agent", "text"}` inline or `{"agent", "ref", "bytes", "preview"}` when the
    Ray layer has offloaded the text; a `vllm` model's reply entry also has `token_ids` (its generated
    ids, packed int32 bytes) and `tokenizer` (docs/vllm.md "Token-exact histories"; never in the output,
    dropped when the text is offloaded); `values[AGENT]` is `{"entry": history index, EXTRACT..., "exit_code"}`.
    A finished message has `status` ok/failed/error and `state` "end" (ok) or "fail" (otherwise).

    `id_from` says where `id` comes from: "field" (the row's own id), "position" (the row has no usable
    id: `id` is its position) or "duplicate" (its own id repeats an earlier row's: written as failed,
    reason duplicate_id). `key`, the row's dedup key, is its id for "field" and its position, in a
    namespace of its own, otherwise: a positional id never collides with a row's own id. `trial` is
    k of a row run several times (`--trials`): its id is then `ID#k`, and its positional key has k.
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
    id_from: str = ID_FIELD
    trial: int | None = None
    driver: int = 0          # the driver shard that admitted the row (`mxc run --drivers`)

    @property
    def key(self) -> Hashable:
        """The row's dedup key (the sink writes each key once; the driver tracks rows by it)."""
        return id_key(self.id) if self.id_from == ID_FIELD else position_key(self.position, self.trial)

    @property
    def finished(self) -> bool:
        """True once the row reached end, fail, a limit or an error."""
        return self.status != RUNNING

    def to_dict(self) -> dict[str, Any]:
        """The message as plain JSON-able data (the shape of the IR's message_schema, plus position):
        history entries without the runtime's ``token_ids`` and ``tokenizer``."""
        return {
            "id": self.id, "row": self.row, "state": self.state, "status": self.status,
            "reason": self.reason, "detail": self.detail, "steps": self.steps,
            "visits": dict(self.visits), "values": {k: dict(v) for k, v in self.values.items()},
            "history": [{k: v for k, v in e.items() if k not in RUNTIME_KEYS} for e in self.history],
            "usage": {k: dict(v) for k, v in self.usage.items()},
            "timing": dict(self.timing), "attempt": self.attempt, "position": self.position,
            "id_from": self.id_from, "trial": self.trial, "driver": self.driver,
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
            attempt=d.get("attempt", 0), position=d.get("position", 0), id_from=d.get("id_from", ID_FIELD),
            trial=d.get("trial"), driver=d.get("driver", 0),
        )
