"""The IR's models and tools as typed, frozen objects (docs/ir.md "Models", "Tools").

``ModelSpec.from_ir`` and ``ToolSpec.from_ir`` parse one entry of the IR's ``models`` or ``tools`` and
raise :class:`IRError` naming the offending key; an absent or null key takes its default
(``names.MODEL_DEFAULTS``, ``SIM_DEFAULTS``, ``TOOL_DEFAULTS``). ``parse_models``/``parse_tools`` parse a
whole IR's. The JSON format is unchanged: these are its reading, not a new one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import AUTOSCALE_DEFAULTS, MODEL_DEFAULTS, SIM_DEFAULTS, TOOL_DEFAULTS

BACKENDS = ("openai", "vllm", "sim")
APIS = ("chat", "completions")


class IRError(ValueError):
    """The IR document is unusable: wrong version, missing keys or dangling references."""


# ---- typed readers: each raises IRError naming `where` ----------------------------------------------

def _number(raw: Mapping, key: str, where: str, default: Any, *, positive: bool = True) -> float | None:
    v = raw.get(key)
    if v is None:
        return default if default is None else float(default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
            positive and v == 0):
        raise IRError(f"{where}.{key} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
    return float(v)


def _int(raw: Mapping, key: str, where: str, default: Any, *, least: int = 1) -> int | None:
    v = raw.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
        raise IRError(f"{where}.{key} must be an integer >= {least}, got {v!r}")
    return v


def _str(raw: Mapping, key: str, where: str, choices: tuple[str, ...] = (), default: str | None = None) -> Any:
    v = raw.get(key)
    if v is None:
        return default
    if not isinstance(v, str) or (choices and v not in choices):
        want = " or ".join(choices) if choices else "a string"
        raise IRError(f"{where}.{key} must be {want}, got {v!r}")
    return v


def _object(raw: Mapping, key: str, where: str, *, required: bool = False) -> dict:
    v = raw.get(key)
    if v is None and not required and key not in raw:
        return {}
    if not isinstance(v, dict):
        raise IRError(f"{where}.{key} must be an object, got {type(v).__name__}")
    return v


# ---- models -------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EnvRef:
    """An ``{"env": VAR, "default": value | null}`` reference, resolved at run time."""

    env: str
    default: str | None = None

    @classmethod
    def from_ir(cls, raw: Any, where: str) -> EnvRef:
        if not isinstance(raw, dict) or not isinstance(raw.get("env"), str) or not raw["env"]:
            raise IRError(f"{where} must be {{\"env\": VAR, \"default\": ...}}, got {raw!r}")
        return cls(raw["env"], _str(raw, "default", where))


@dataclass(frozen=True, slots=True)
class SimSpec:
    """A model's ``sim`` block: what the simulated backend draws and how fast it answers."""

    tokens: tuple[int, int]
    ttft_s: float
    per_token_s: float
    max_concurrency: int
    replicas: int

    @classmethod
    def from_ir(cls, raw: Mapping, where: str) -> SimSpec:
        tokens = raw.get("tokens")
        if not (isinstance(tokens, list) and len(tokens) == 2
                and all(isinstance(t, int) and not isinstance(t, bool) for t in tokens) and 0 <= tokens[0] <= tokens[1]):
            raise IRError(f"{where}.tokens must be a range [lo, hi] of integers, got {tokens!r}")
        d = SIM_DEFAULTS
        return cls((tokens[0], tokens[1]),
                   _number(raw, "ttft_s", where, d["ttft_s"], positive=False),
                   _number(raw, "per_token_s", where, d["per_token_s"], positive=False),
                   _int(raw, "max_concurrency", where, d["max_concurrency"]),
                   _int(raw, "replicas", where, d["replicas"]))


@dataclass(frozen=True, slots=True)
class Autoscale:
    """A vllm model's Serve autoscaling bounds."""

    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float

    @classmethod
    def from_ir(cls, raw: Mapping, where: str) -> Autoscale:
        lo = _int(raw, "min_replicas", where, None, least=0)
        hi = _int(raw, "max_replicas", where, None)
        if lo is None or hi is None or lo > hi:
            raise IRError(f"{where} needs min_replicas <= max_replicas, got {lo!r} and {hi!r}")
        return cls(lo, hi, _number(raw, "target_ongoing_requests", where,
                                   AUTOSCALE_DEFAULTS["target_ongoing_requests"]))


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One entry of the IR's ``models``; ``key`` is its name there, ``name`` the model sent to the server."""

    key: str
    backend: str
    sim: SimSpec
    name: str | None = None
    url: tuple[str, ...] | EnvRef | None = None
    api_key: EnvRef | None = None
    api: str = MODEL_DEFAULTS["api"]
    params: Mapping[str, Any] = field(default_factory=dict)
    replicas: int = MODEL_DEFAULTS["replicas"]
    max_concurrency: int = MODEL_DEFAULTS["max_concurrency"]
    tensor_parallel: int = MODEL_DEFAULTS["tensor_parallel"]
    pipeline_parallel: int = MODEL_DEFAULTS["pipeline_parallel"]
    autoscale: Autoscale | None = None
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None            # None: limits.call_timeout_s
    retries: int | None = None                # None: limits.retries

    @classmethod
    def from_ir(cls, key: str, raw: Any) -> ModelSpec:
        """Parse ``models[key]``; IRError naming the bad key."""
        where = f"models.{key}"
        if not isinstance(raw, dict):
            raise IRError(f"{where} must be an object")
        backend = raw.get("backend")
        if backend not in BACKENDS:
            raise IRError(f"{where}.backend must be openai, vllm or sim, got {backend!r}")
        url = raw.get("url")
        if isinstance(url, list):
            if not all(isinstance(u, str) for u in url):
                raise IRError(f"{where}.url must be a list of strings, got {url!r}")
            url = tuple(url)
        elif url is not None:
            url = EnvRef.from_ir(url, f"{where}.url")
        key_ref = raw.get("api_key")
        auto = raw.get("autoscale")
        d = MODEL_DEFAULTS
        return cls(
            key=key, backend=backend, sim=SimSpec.from_ir(_object(raw, "sim", where, required=True), f"{where}.sim"),
            name=_str(raw, "name", where), url=url,
            api_key=None if key_ref is None else EnvRef.from_ir(key_ref, f"{where}.api_key"),
            api=_str(raw, "api", where, APIS, d["api"]), params=dict(_object(raw, "params", where)),
            replicas=_int(raw, "replicas", where, d["replicas"]),
            max_concurrency=_int(raw, "max_concurrency", where, d["max_concurrency"]),
            tensor_parallel=_int(raw, "tensor_parallel", where, d["tensor_parallel"]),
            pipeline_parallel=_int(raw, "pipeline_parallel", where, d["pipeline_parallel"]),
            autoscale=None if auto is None else Autoscale.from_ir(_object(raw, "autoscale", where),
                                                                  f"{where}.autoscale"),
            engine_args={} if raw.get("engine_args") is None else dict(_object(raw, "engine_args", where)),
            timeout_s=_number(raw, "timeout_s", where, None), retries=_int(raw, "retries", where, None, least=0),
        )


# ---- tools --------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One entry of the IR's ``tools``: its sandbox limits and its service's replicas and concurrency."""

    key: str
    kind: str = "python"
    timeout_s: float = TOOL_DEFAULTS["timeout_s"]
    memory_bytes: int = TOOL_DEFAULTS["memory_bytes"]
    cpu_s: float = TOOL_DEFAULTS["timeout_s"]
    network: bool = TOOL_DEFAULTS["network"]
    max_output_bytes: int = TOOL_DEFAULTS["max_output_bytes"]
    replicas: int = TOOL_DEFAULTS["replicas"]
    max_concurrency: int = TOOL_DEFAULTS["max_concurrency"]

    @classmethod
    def from_ir(cls, key: str, raw: Any) -> ToolSpec:
        """Parse ``tools[key]``; IRError naming the bad key (the sandbox checks its own bounds)."""
        where = f"tools.{key}"
        if not isinstance(raw, dict):
            raise IRError(f"{where} must be an object")
        network = raw.get("network", TOOL_DEFAULTS["network"])
        if not isinstance(network, bool):
            raise IRError(f"{where}.network must be true or false, got {network!r}")
        d = TOOL_DEFAULTS
        timeout = _number(raw, "timeout_s", where, d["timeout_s"])
        return cls(key, _str(raw, "kind", where, default="python"), timeout,
                   _int(raw, "memory_bytes", where, d["memory_bytes"]), _number(raw, "cpu_s", where, timeout),
                   network, _int(raw, "max_output_bytes", where, d["max_output_bytes"]),
                   _int(raw, "replicas", where, d["replicas"]), _int(raw, "max_concurrency", where, d["max_concurrency"]))

    def sandbox_spec(self) -> dict[str, Any]:
        """The tool object the sandbox and the tool service read (docs/ir.md "Tools", defaults filled)."""
        return {"kind": self.kind, "timeout_s": self.timeout_s, "memory_bytes": self.memory_bytes,
                "cpu_s": self.cpu_s, "network": self.network, "max_output_bytes": self.max_output_bytes,
                "replicas": self.replicas, "max_concurrency": self.max_concurrency}


def parse_models(ir: Mapping) -> dict[str, ModelSpec]:
    """Every entry of ``ir["models"]``, parsed; IRError when one is malformed."""
    models = ir.get("models")
    if not isinstance(models, dict):
        raise IRError(f"models must be an object, got {type(models).__name__}")
    return {k: ModelSpec.from_ir(k, m) for k, m in models.items()}


def parse_tools(ir: Mapping) -> dict[str, ToolSpec]:
    """Every entry of ``ir["tools"]``, parsed; IRError when one is malformed."""
    tools = ir.get("tools")
    if not isinstance(tools, dict):
        raise IRError(f"tools must be an object, got {type(tools).__name__}")
    return {k: ToolSpec.from_ir(k, t) for k, t in tools.items()}
