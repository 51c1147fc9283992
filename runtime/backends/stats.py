"""Counters shared by the model clients (openai_client.ClientStats, serve_deploy.ServeStats)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class CallStats:
    """Counters of one model client (no secrets): calls and how they ended, attempts, retries and
    attempt failures by kind. A client adds its own counters as fields of a subclass."""

    calls: int = 0
    ok: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)   # attempt failure kinds

    def as_dict(self) -> dict:
        """Every field, for a snapshot: containers copied, seconds rounded to the millisecond."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, float):
        return round(value, 3)
    return value
