"""The compiler: the IR of docs/ir.md — its keys, defaults and units, expression trees, the schemas
(valid JSON Schema 2020-12 that accept the sample rows), the source hash, and determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from matrixlang.compiler import build_ir, compile_file, compile_source, dumps
from matrixlang.errors import MxError
from matrixlang.source import Source

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.mx"))
TOP = {"ir_version", "workflow", "input_schema", "message_schema", "models", "tools", "agents", "states",
       "limits", "output"}


def ir_of(text: str) -> dict:
    ir, an = compile_source(Source("t.mx", text))
    assert ir is not None, [d.message for d in an.diags.items]
    return ir


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_every_workflow_compiles_to_the_documented_shape(path: Path) -> None:
    ir = compile_file(path)
    assert set(ir) == TOP and ir["ir_version"] == "1.2"
    assert set(ir["workflow"]) == {"name", "description", "source_hash"}
    for schema in (ir["input_schema"], ir["message_schema"]):
        Draft202012Validator.check_schema(schema)
    rows = ROOT / "workflows" / "data" / f"{path.stem}.jsonl"
    if rows.exists():
        validator = Draft202012Validator(ir["input_schema"])
        for line in rows.read_text(encoding="utf-8").splitlines():
            if line.strip():
                errors = list(validator.iter_errors(json.loads(line)))
                assert errors == [], errors[0].message
    assert set(ir["states"]) == {"start", *ir["agents"]}
    for name, state in ir["states"].items():
        assert state["agent"] == (None if name == "start" else name)
        for t in state["transitions"]:
            assert t["to"] in ir["agents"] or t["to"] in ("end", "fail")
            assert (t["reason"] is not None) == (t["to"] == "fail")
            assert (t["when"] is None) == (t["guard"] is None)
    for a in ir["agents"].values():
        assert (a["model"] in ir["models"]) if a["kind"] == "llm" else (a["tool"] in ir["tools"])
        assert a["fields"][0] == "text" and ("exit_code" in a["fields"]) == (a["kind"] == "tool")


def test_source_hash_names_the_meaning() -> None:
    text = (ROOT / "workflows" / "coral.mx").read_text(encoding="utf-8")
    ir = ir_of(text)
    rest = json.loads(dumps(ir))
    del rest["workflow"]["source_hash"]
    want = "sha256:" + hashlib.sha256(dumps(rest, pretty=False).encode()).hexdigest()
    assert ir["workflow"]["source_hash"] == want
    # comments and layout do not change the IR, byte for byte
    noisy = "# a header\n" + text.replace("\n", "   # note\n", 3).replace("start -> teacher", "start  ->   teacher")
    assert dumps(ir_of(noisy)) == dumps(ir)
    # a guard does
    changed = ir_of(text.replace("turns >= 20", "turns >= 21"))
    assert changed["workflow"]["source_hash"] != ir["workflow"]["source_hash"]


def test_output_is_deterministic_and_sorted() -> None:
    text = (ROOT / "workflows" / "coral.mx").read_text(encoding="utf-8")
    a, b = dumps(ir_of(text)), dumps(ir_of(text))
    assert a == b and a.endswith("\n")
    assert list(json.loads(a)) == sorted(json.loads(a))


BASE = '''workflow w "units and defaults"
input { id: str  n: int?  tags: list[str] }
limits { max_steps = 12  row_timeout = 10m }
model llm {
  backend = "openai"
  name = "m"
  url = "http://a:1/v1, http://b:1/v1"
  api_key = env("KEY")
  max_tokens = 40
  ttft = 150ms
  timeout = 30s
}
model dev { backend = "sim"  tokens = 5..9  per_token = 2ms  replicas = 3 }
tool box { kind = "python"  memory = 64MB  timeout = 5s }
agent a { model = llm  params { temperature = 0.2 }  extract x = regex(r"(\\d+)")  extract v = json("a.b") }
agent b { model = dev  history = false }
agent t { tool = box  input = "{{ a.x }}" }
flow {
  start -> a
  a -> b when a.x != null and a.v == "yes"
  a -> fail "none" when not a.x in ["1", "2"] or -turns < -3
  a -> t
  b -> end
  t -> end when t.exit_code == 0 and history[-1].text[:2] == "ok"
  t -> fail "tool"
}
output { id = row.id  n = len(row.tags) + 1  x = a.x }
'''


def test_units_defaults_and_settings() -> None:
    ir = ir_of(BASE)
    assert ir["limits"] == {"max_steps": 12, "row_timeout_s": 600.0, "call_timeout_s": 120.0, "retries": 3,
                            "row_attempts": 3, "trials": 1, "until_ok": None}
    llm, dev = ir["models"]["llm"], ir["models"]["dev"]
    assert llm["url"] == ["http://a:1/v1", "http://b:1/v1"]
    assert llm["api_key"] == {"env": "KEY", "default": None}
    assert llm["params"] == {"max_tokens": 40} and llm["timeout_s"] == 30.0 and llm["retries"] is None
    assert llm["sim"]["ttft_s"] == pytest.approx(0.15) and llm["sim"]["tokens"] == [16, 40]
    assert dev["sim"]["tokens"] == [5, 9] and dev["sim"]["per_token_s"] == pytest.approx(0.002)
    assert dev["sim"]["replicas"] == 3 and dev["name"] is None
    assert ir["tools"]["box"] == {"kind": "python", "timeout_s": 5.0, "cpu_s": 5.0, "memory_bytes": 64 * 2**20,
                                  "network": False, "max_output_bytes": 65536, "replicas": 1,
                                  "max_concurrency": 4}
    a, b, t = ir["agents"]["a"], ir["agents"]["b"], ir["agents"]["t"]
    assert a["fields"] == ["text", "x", "v"] and a["params"] == {"temperature": 0.2} and a["history"] is True
    assert a["extracts"] == [{"name": "x", "kind": "regex", "pattern": "(\\d+)"},
                             {"name": "v", "kind": "json", "path": ["a", "b"]}]
    assert b["history"] is False and b["system"] is None
    assert t["kind"] == "tool" and t["input"] == "{{ a.x }}" and t["fields"] == ["text", "exit_code"]
    assert ir["input_schema"]["required"] == ["id", "tags"]
    assert ir["input_schema"]["properties"]["n"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert ir["input_schema"]["x-id-field"] == "id"


def test_guards_are_expression_trees() -> None:
    states = ir_of(BASE)["states"]
    t0, t1, t2 = states["a"]["transitions"]
    assert t0["when"] == {"op": "and", "args": [
        {"op": "!=", "left": {"op": "attr", "obj": {"op": "var", "name": "a"}, "name": "x"},
         "right": {"op": "lit", "value": None}},
        {"op": "==", "left": {"op": "attr", "obj": {"op": "var", "name": "a"}, "name": "v"},
         "right": {"op": "lit", "value": "yes"}}]}
    assert t0["guard"] == 'a.x != null and a.v == "yes"' and t0["to"] == "b"
    assert t1["when"]["op"] == "or"
    assert t1["when"]["args"][0] == {"op": "not", "arg": {
        "op": "in", "left": {"op": "attr", "obj": {"op": "var", "name": "a"}, "name": "x"},
        "right": {"op": "list", "items": [{"op": "lit", "value": "1"}, {"op": "lit", "value": "2"}]}}}
    assert t1["when"]["args"][1] == {"op": "<", "left": {"op": "neg", "arg": {"op": "var", "name": "turns"}},
                                     "right": {"op": "lit", "value": -3}}
    assert (t1["to"], t1["reason"]) == ("fail", "none")
    assert t2 == {"to": "t", "reason": None, "when": None, "guard": None}
    hist = states["t"]["transitions"][0]["when"]["args"][1]["left"]
    assert hist == {"op": "slice", "obj": {"op": "attr", "name": "text", "obj": {
        "op": "index", "obj": {"op": "var", "name": "history"}, "index": {"op": "lit", "value": -1}}},
        "lo": None, "hi": {"op": "lit", "value": 2}}
    assert states["start"]["transitions"] == [{"to": "a", "reason": None, "when": None, "guard": None}]


def test_output_fields_in_source_order() -> None:
    out = ir_of(BASE)["output"]["fields"]
    assert [f["name"] for f in out] == ["id", "n", "x"]
    assert out[1]["expr"] == {"op": "+", "left": {"op": "call", "fn": "len", "args": [
        {"op": "attr", "obj": {"op": "var", "name": "row"}, "name": "tags"}]}, "right": {"op": "lit", "value": 1}}


def test_message_schema_accepts_a_documented_message() -> None:
    schema = ir_of(BASE)["message_schema"]
    message = {
        "id": "q-1", "row": {"id": "q-1", "tags": ["a"]}, "state": "b", "status": "running", "reason": None,
        "steps": 2, "visits": {"a": 1, "b": 1},
        "values": {"a": {"entry": 0, "x": "12", "v": {"deep": [1]}, "exit_code": None}},
        "history": [{"agent": "a", "text": "12"}, {"agent": "b", "ref": "00ff", "bytes": 4096, "preview": "…"}],
        "usage": {"a": {"prompt_tokens": 10, "completion_tokens": 2, "calls": 1}},
        "timing": {"admitted": 1764190000.5, "finished": None}, "attempt": 0}
    v = Draft202012Validator(schema)
    assert list(v.iter_errors(message)) == []
    for bad in ({**message, "state": "nowhere"}, {**message, "visits": {"zz": 1}},
                {**message, "history": [{"agent": "a"}]}, {**message, "row": {"id": "q", "tags": "a"}}):
        assert list(v.iter_errors(bad)), bad


def test_errors_raise_with_their_diagnostics(tmp_path: Path) -> None:
    p = tmp_path / "bad.mx"
    p.write_text(BASE.replace("start -> a", "start -> aa"), encoding="utf-8")
    with pytest.raises(MxError) as info:
        compile_file(p)
    assert [d.code for d in info.value.diagnostics] == ["E031"]
    ir, an = compile_source(Source("bad.mx", p.read_text(encoding="utf-8")))
    assert ir is None and not an.ok


def test_warnings_do_not_stop_compilation() -> None:
    ir, an = compile_source(Source("w.mx", BASE.replace("output {", 'model spare { backend = "sim" }\noutput {')))
    assert [d.code for d in an.diags.items] == ["W004"] and ir is not None
    assert build_ir(an) == ir


def test_vllm_sampling_extensions_reach_the_params() -> None:
    ir = ir_of('workflow t "x"\ninput { id: str }\n'
               'model llm { backend = "openai"  name = "m"  url = "http://h:1/v1"  max_tokens = 8  ignore_eos = true }\n'
               'agent a { model = llm  system = "s"  params { min_tokens = 8  ignore_eos = false } }\n'
               'flow { start -> a  a -> end }\noutput { id = row.id }\n')
    assert ir["models"]["llm"]["params"] == {"max_tokens": 8, "ignore_eos": True}
    assert ir["agents"]["a"]["params"] == {"min_tokens": 8, "ignore_eos": False}
