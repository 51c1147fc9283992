"""What each block accepts: its keys, the kind of value each takes, and the defaults.

Kinds: str, int, number, bool, duration, size, range, template, url, secret, str_or_list,
model (a model name), tool (a tool name), backend, tool_kind, api.

The language's names and defaults (context names, reserved names, limits, tool and simulator
defaults) are the runtime's own table, `matrixlang.runtime.names`, re-exported here; functions are
`matrixlang.runtime.semantics.expr.FUNCTIONS`, template filters and tests `matrixlang.runtime.semantics.templates`.
"""

from __future__ import annotations

from dataclasses import dataclass

from matrixlang.runtime.names import (  # noqa: F401 - re-exported for the checker and compiler
    AGENT_DEFAULTS,
    AGENT_FIELDS,
    AUTOSCALE_DEFAULTS,
    CONTEXT_NAMES,
    LIMIT_DEFAULTS,
    MODEL_DEFAULTS,
    RESERVED_FIELDS,
    RESERVED_NAMES,
    RESERVED_OUTPUT_FIELDS,
    SIM_DEFAULTS,
    TOOL_DEFAULTS,
)


@dataclass(frozen=True, slots=True)
class Key:
    kind: str
    min: float | None = None
    backends: tuple[str, ...] = ()  # models: the backends this key applies to (empty: all)
    doc: str = ""
    zero: bool = False              # durations and sizes: zero is a value (a simulated latency)


SAMPLING = {
    "temperature": Key("number", 0, doc="sampling temperature"),
    "max_tokens": Key("int", 1, doc="largest completion, in tokens"),
    "top_p": Key("number", 0, doc="nucleus sampling"),
    "stop": Key("str_or_list", doc="stop sequences"),
    "seed": Key("int", doc="sampling seed sent to the server"),
    "presence_penalty": Key("number", doc=""),
    "frequency_penalty": Key("number", doc=""),
    # vLLM's extensions (OpenAI-compatible servers that lack them refuse or ignore them): a fixed
    # reply length for benchmarks, `max_tokens` with `ignore_eos = true` (bench/gpu, docs/gpu.md).
    "ignore_eos": Key("bool", doc="keep generating past the end-of-sequence token (vLLM)"),
    "min_tokens": Key("int", 0, doc="generate at least this many tokens (vLLM)"),
}

MODEL = {
    "backend": Key("backend", doc='"openai", "vllm" or "sim"'),
    "name": Key("str", doc="model name sent to the server"),
    "url": Key("url", backends=("openai",), doc="base URL(s); comma-separated URLs are load-balanced"),
    "api_key": Key("secret", backends=("openai",), doc='always env("VAR")'),
    "api": Key("api", backends=("openai",), doc='"chat" (POST /chat/completions) or "completions" (POST /completions)'),
    "timeout": Key("duration", 0, doc="per-request timeout"),
    "retries": Key("int", 0, doc="retries after a failed call"),
    "replicas": Key("int", 1, doc="vllm: engine replicas; sim: simulated servers"),
    "max_concurrency": Key("int", 1, doc="sequences one replica serves at once"),
    "tensor_parallel": Key("int", 1, backends=("vllm",)),
    "pipeline_parallel": Key("int", 1, backends=("vllm",)),
    "min_replicas": Key("int", 0, backends=("vllm",)),
    "max_replicas": Key("int", 1, backends=("vllm",)),
    "target_ongoing_requests": Key("int", 1, backends=("vllm",)),
    "max_model_len": Key("int", 1, backends=("vllm",)),
    "gpu_memory_utilization": Key("number", 0, backends=("vllm",)),
    "dtype": Key("str", backends=("vllm",)),
    # The simulator's settings apply to every backend: they describe the stand-in `--backend sim` uses.
    "tokens": Key("range", 1, doc="reply length in tokens (simulator)"),
    "ttft": Key("duration", 0, doc="time to first token (simulator)", zero=True),
    "per_token": Key("duration", 0, doc="decode time per token (simulator)", zero=True),
    **SAMPLING,
}
BACKENDS = ("openai", "vllm", "sim")
APIS = ("chat", "completions")
ENGINE_ARGS = ("max_model_len", "gpu_memory_utilization", "dtype")

TOOL = {
    "kind": Key("tool_kind", doc='"python"'),
    "timeout": Key("duration", 0, doc="wall-clock limit per run"),
    "memory": Key("size", 1, doc="address-space limit"),
    "cpu": Key("duration", 0, doc="CPU-time limit (default: the timeout)"),
    "network": Key("bool", doc="allow network access (default false)"),
    "max_output": Key("size", 1, doc="output kept per run"),
    "replicas": Key("int", 1),
    "max_concurrency": Key("int", 1),
}
TOOL_KINDS = ("python",)

AGENT = {
    "model": Key("model"),
    "tool": Key("tool"),
    "system": Key("template"),
    "prompt": Key("template"),
    "input": Key("template"),
    "history": Key("bool"),
    "sim": Key("template"),
    "replicas": Key("int", 1),
    "max_concurrency": Key("int", 1),
}
LLM_ONLY = ("system", "prompt", "history", "sim")
TOOL_ONLY = ("input",)

LIMITS = {
    "max_steps": Key("int", 1, doc="steps before a row fails with max_steps"),
    "row_timeout": Key("duration", 0, doc="wall time before a row fails with row_timeout"),
    "call_timeout": Key("duration", 0, doc="default timeout of one model or tool call"),
    "retries": Key("int", 0, doc="retries of a failed service call"),
    "row_attempts": Key("int", 1, doc="times a row is run again after its agent died"),
    "trials": Key("int", 1, doc="runs of each input row, ids ID#k (mxc run --trials)"),
    "until_ok": Key("int", 1, doc="stop admitting rows once this many ok rows are written (mxc run --until-ok)"),
}
TYPES = ("str", "int", "float", "bool", "json", "list")

RESERVED = RESERVED_NAMES

DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Sizes are binary, as in Docker and most memory limits: 1KB = 1024 B.
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
