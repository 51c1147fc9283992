"""The programs of the transport, engine and vLLM benchmarks (bench/hops.py, overhead.py,
scale_model.py, engine_micro.py, scripts/bench_vllm.py and its test), from `.mx` files:
bench/workloads/pingpong.mx, varied.mx and tiny_duo.mx, and the spec's coral (workflows/coral.mx).
A benchmark's parameters (hops, steps, backend) are written into the program text before it is
compiled, so every IR is one the compiler makes; the simulated timings of coral's variants are set
on its compiled ``sim`` block, which is what the simulator reads. Nothing here comes from tests/.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ROOT / "bench" / "workloads"
CORAL = ROOT / "workflows" / "coral.mx"


def program_text(path: Path, values: Mapping[str, str] | None = None) -> str:
    """The text of the `.mx` program at ``path``, each key of ``values`` (a piece of its text, present
    exactly once) replaced by its value. ValueError when a key is not found exactly once."""
    text = path.read_text(encoding="utf-8")
    for old, new in (values or {}).items():
        if text.count(old) != 1:
            raise ValueError(f"{path.name}: {old!r} occurs {text.count(old)} times, not once")
        text = text.replace(old, new)
    return text


def compile_program(path: Path, values: Mapping[str, str] | None = None) -> dict:
    """The IR of :func:`program_text`; MxError when it does not compile."""
    from matrixlang.compiler import compile_source
    from matrixlang.errors import MxError
    from matrixlang.source import Source

    ir, an = compile_source(Source(str(path), program_text(path, values)))
    if ir is None:
        raise MxError([d for d in an.diags.sorted() if d.is_error])
    return ir


@cache
def _coral() -> dict:
    return compile_program(CORAL)


def coral() -> dict:
    """The spec's coral workflow: a teacher and a student until their answers agree (at most 20 turns)."""
    return copy.deepcopy(_coral())


def pingpong(hops: int) -> dict:
    """Two agents passing each row back and forth ``hops`` times; the simulated model answers at once."""
    return compile_program(WORKLOADS / "pingpong.mx",
                           {"turns >= 20": f"turns >= {hops}", "max_steps = 22": f"max_steps = {hops + 2}"})


def varied(max_steps: int = 40) -> dict:
    """One agent looping until ``turns >= row.n``: rows of very different lengths; 10-40 ms calls."""
    return compile_program(WORKLOADS / "varied.mx", {"max_steps = 40": f"max_steps = {max_steps}"})


def waiting(seconds: float) -> dict:
    """coral's teacher alone, its model taking ``seconds`` per call: admitted rows wait in flight."""
    ir = coral()
    ir["models"]["llm"]["sim"].update(ttft_s=seconds, per_token_s=0.0, max_concurrency=20000)
    ir["states"]["teacher"]["transitions"] = [{"to": "end", "reason": None, "when": None, "guard": None}]
    return ir


def long_replies() -> dict:
    """coral with ~1 KB filler replies that never agree: 20 steps, the history grows to ~20 KB."""
    ir = coral()
    for agent in ir["agents"].values():
        agent["sim"] = None
    ir["models"]["llm"]["sim"].update(tokens=[150, 250], ttft_s=0.0, per_token_s=0.0)
    return ir


def tiny_duo(name: str, backend: str) -> str:
    """bench/workloads/tiny_duo.mx as ``workflow name``, its model's ``backend = "sim"`` line replaced
    by ``backend`` (the lines saying how the model is served, e.g. ``backend = "vllm"`` and its name)."""
    return program_text(WORKLOADS / "tiny_duo.mx",
                        {"workflow tiny_duo ": f"workflow {name} ", '  backend = "sim"\n': backend.rstrip("\n") + "\n"})
