"""The benchmark workloads: their `.mx` programs (bench/workloads/), input generators, and which
models are LLM pools (counted in tokens/s and fleet capacity) rather than simulated tool services."""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

WORKLOADS_DIR = Path(__file__).resolve().parent / "workloads"

_WORDS = ("the", "river", "model", "energy", "proof", "market", "cell", "argument", "number", "policy",
          "signal", "light", "theorem", "price", "protein", "claim", "orbit", "data", "rule", "force")


def _text(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def coral_rows(n: int, seed: int = 0) -> list[dict]:
    """Multiple-choice questions (~300-character question, four choices)."""
    rng = random.Random(f"coral:{seed}")
    return [{"id": f"q{i}", "question": _text(rng, 300) + "?",
             "choices": [_text(rng, 24) for _ in range(4)], "answer": rng.choice("ABCD")} for i in range(n)]


def curation_rows(n: int, seed: int = 0) -> list[dict]:
    """Web documents of 1-3 KB."""
    rng = random.Random(f"curation:{seed}")
    return [{"id": f"d{i}", "text": _text(rng, rng.randint(1000, 3000))} for i in range(n)]


def tooluse_rows(n: int, seed: int = 0) -> list[dict]:
    """Customer scenarios (persona and task, ~200 characters)."""
    rng = random.Random(f"tooluse:{seed}")
    return [{"id": f"t{i}", "persona": _text(rng, 80), "task": _text(rng, 120)} for i in range(n)]


def hold_rows(n: int, seed: int = 0) -> list[dict]:
    """Questions of ~500 characters (with the first reply: a ~1 KB message)."""
    rng = random.Random(f"hold:{seed}")
    return [{"id": f"h{i}", "question": _text(rng, 500)} for i in range(n)]


def longhist_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(f"longhist:{seed}")
    return [{"id": f"l{i}", "topic": _text(rng, 60)} for i in range(n)]


@dataclass(frozen=True, slots=True)
class Workload:
    """A benchmark workload: program, input generator, and its LLM models (the GPU fleet)."""

    name: str
    mx: str
    rows: Any                                    # (n, seed) -> list of input rows
    llm_models: tuple[str, ...]
    description: str = ""
    tool_models: tuple[str, ...] = field(default=())

    def ir(self, overrides: dict[str, dict] | None = None, agents: dict[str, dict] | None = None) -> dict:
        """The compiled IR; ``overrides`` patches models' ``sim`` blocks, ``agents`` patches agents."""
        ir = copy.deepcopy(_compiled(self.mx))
        for model, patch in (overrides or {}).items():
            ir["models"][model]["sim"].update(patch)
        for agent, patch in (agents or {}).items():
            ir["agents"][agent].update(patch)
        return ir

    def write_input(self, path: Path, n: int, seed: int = 0) -> Path:
        path.write_text("".join(json.dumps(r) + "\n" for r in self.rows(n, seed)), encoding="utf-8")
        return path


@cache
def _compiled(mx: str) -> dict:
    from matrixlang.compiler import compile_file

    return compile_file(WORKLOADS_DIR / mx)


WORKLOADS: dict[str, Workload] = {
    "coral": Workload("coral", "coral.mx", coral_rows, ("llm",),
                      "two agents to agreement; 2-20 steps per row; ~1 KB messages"),
    "curation": Workload("curation", "curation.mx", curation_rows, ("small", "large"),
                         "filter (small, fast) -> scorer -> writer (large, slow); ~90% rejected"),
    "tooluse": Workload("tooluse", "tooluse.mx", tooluse_rows, ("user_llm", "agent_llm"),
                        "user sim <-> agent <-> tools; heavy-tailed tool latency; ~20 steps per row",
                        ("db_fast", "db_slow", "db_stall")),
    "hold": Workload("hold", "hold.mx", hold_rows, ("fast", "slow"), "rows waiting in flight"),
    "longhist": Workload("longhist", "longhist.mx", longhist_rows, ("llm",), "16 long replies per row"),
}

SCHEDULING_WORKLOADS = ("coral", "curation", "tooluse")
