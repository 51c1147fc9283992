"""The peer-to-peer Ray runtime: executes the IR, knows nothing of the syntax.

    from matrixlang.runtime import run, RunOptions
    summary = run(ir, RunOptions(input="rows.jsonl", output="out.jsonl", backend="sim"))

Names are imported lazily, so that ``import matrixlang.runtime.semantics.engine`` (no Ray) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "run": "control.run", "RunOptions": "control.run", "RunError": "control.run",
    "Engine": "semantics.engine", "StepError": "semantics.engine", "LLMCall": "semantics.engine",
    "ToolCall": "semantics.engine", "Reply": "semantics.engine",
    "Message": "semantics.message", "load_ir": "ir", "IRError": "ir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'matrixlang.runtime' has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)
