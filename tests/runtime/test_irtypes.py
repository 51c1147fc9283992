"""The IR's models and tools as typed objects (runtime/irtypes.py): what a good spec parses to, absent
keys as their defaults, and a one-line IRError naming the key for each malformed one."""

from __future__ import annotations

import copy

import pytest
from matrixlang.runtime.ir import IRError, check_ir, load_ir_specs
from matrixlang.runtime.irtypes import (
    Autoscale,
    EnvRef,
    ModelSpec,
    SimSpec,
    ToolSpec,
    parse_models,
    parse_tools,
)
from matrixlang.runtime.names import MODEL_DEFAULTS, SIM_DEFAULTS, TOOL_DEFAULTS
from matrixlang.runtime.semantics.engine import Engine
from support import ir_fixtures as F


def test_a_compiled_model_and_tool_parse_to_their_fields() -> None:
    ir, models, tools = load_ir_specs(F.coder())
    m = models["llm"]
    assert (m.key, m.backend, m.name, m.url, m.api_key, m.api) == (
        "llm", "openai", "Qwen/Qwen2.5-Coder-7B-Instruct", EnvRef("LLM_URL"), None, "chat")
    assert (m.timeout_s, m.retries, m.autoscale, m.engine_args) == (120.0, None, None, {})
    assert m.sim == SimSpec((16, 64), 0.01, 0.0005, 64, 1)
    assert tools == {"sandbox": ToolSpec("sandbox", **{k: v for k, v in ir["tools"]["sandbox"].items()})}
    assert tools["sandbox"].sandbox_spec() == ir["tools"]["sandbox"]
    eng = Engine(F.coder())
    assert eng.models == models and eng.tools == tools


def test_absent_keys_take_the_defaults() -> None:
    m = ModelSpec.from_ir("m", {"backend": "vllm", "sim": {"tokens": [1, 2]}})
    assert {k: getattr(m, k) for k in MODEL_DEFAULTS} == MODEL_DEFAULTS
    assert (m.sim.ttft_s, m.sim.replicas, m.params, m.url) == (SIM_DEFAULTS["ttft_s"], 1, {}, None)
    t = ToolSpec.from_ir("t", {"kind": "python", "timeout_s": 3})
    assert (t.timeout_s, t.cpu_s, t.memory_bytes, t.max_concurrency) == (
        3.0, 3.0, TOOL_DEFAULTS["memory_bytes"], TOOL_DEFAULTS["max_concurrency"])


def test_urls_keys_and_autoscale() -> None:
    m = ModelSpec.from_ir("m", {"backend": "openai", "url": ["http://a/v1", "http://b/v1"], "sim": {"tokens": [0, 0]},
                                "api_key": {"env": "K", "default": None}, "api": "completions",
                                "autoscale": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}})
    assert (m.url, m.api_key, m.api) == (("http://a/v1", "http://b/v1"), EnvRef("K"), "completions")
    assert m.autoscale == Autoscale(1, 4, 8.0)


MODEL_BREAKS = [
    ("backend", "gpt", "models.m.backend"), ("sim", None, "models.m.sim"), ("sim", 1.5, "models.m.sim"),
    ("sim", {"tokens": [5, 1]}, "models.m.sim.tokens"), ("sim", {"tokens": [1, 2], "replicas": "two"},
                                                          "models.m.sim.replicas"),
    ("params", None, "models.m.params"), ("params", [1], "models.m.params"), ("url", "http://x", "models.m.url"),
    ("url", [1], "models.m.url"), ("url", {"default": "http://x"}, "models.m.url"),
    ("api_key", "sk-literal", "models.m.api_key"), ("api", "embeddings", "models.m.api"),
    ("name", 7, "models.m.name"), ("replicas", 0, "models.m.replicas"), ("max_concurrency", True, "models.m.max_concurrency"),
    ("timeout_s", "x", "models.m.timeout_s"), ("timeout_s", 0, "models.m.timeout_s"),
    ("retries", -1, "models.m.retries"), ("retries", 1.5, "models.m.retries"),
    ("autoscale", {"min_replicas": 3, "max_replicas": 2}, "models.m.autoscale"),
    ("engine_args", "x", "models.m.engine_args"), ("tensor_parallel", 0, "models.m.tensor_parallel"),
]


@pytest.mark.parametrize(("key", "value", "named"), MODEL_BREAKS, ids=[f"{k}={v!r}" for k, v, _ in MODEL_BREAKS])
def test_a_malformed_model_is_an_ir_error_naming_its_key(key: str, value: object, named: str) -> None:
    ir = F.loop()
    ir["models"]["m"][key] = value
    with pytest.raises(IRError, match=named.replace(".", r"\.")) as ei:
        check_ir(ir)
    assert "\n" not in str(ei.value)


TOOL_BREAKS = [("timeout_s", -1), ("timeout_s", float("nan")), ("memory_bytes", 1.5), ("cpu_s", "1"),
               ("network", "no"), ("max_output_bytes", 0), ("replicas", 0), ("max_concurrency", False),
               ("kind", 3)]


@pytest.mark.parametrize(("key", "value"), TOOL_BREAKS, ids=[f"{k}={v!r}" for k, v in TOOL_BREAKS])
def test_a_malformed_tool_is_an_ir_error_naming_its_key(key: str, value: object) -> None:
    ir = F.coder()
    ir["tools"]["sandbox"][key] = value
    with pytest.raises(IRError, match=rf"tools\.sandbox\.{key}"):
        check_ir(ir)


@pytest.mark.parametrize("top", ["models", "tools"])
def test_models_and_tools_must_be_objects(top: str) -> None:
    for bad in ([], None, "x"):
        ir = copy.deepcopy(F.coder())
        ir[top] = bad
        with pytest.raises(IRError, match=top):
            check_ir(ir)
    with pytest.raises(IRError, match=f"{top}.x must be an object"):
        (parse_models if top == "models" else parse_tools)({top: {"x": 3}})
