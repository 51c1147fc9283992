"""Hand-written IR 1.0 documents (docs/ir.md) for the runtime tests: the spec's three programs and a
few small workflows. Built with tiny node helpers so the expression trees stay readable."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

# ---- expression nodes ----------------------------------------------------------------------------


def lit(v: Any) -> dict:
    return {"op": "lit", "value": v}


def var(name: str) -> dict:
    return {"op": "var", "name": name}


def attr(obj: dict | str, name: str) -> dict:
    return {"op": "attr", "obj": var(obj) if isinstance(obj, str) else obj, "name": name}


def dot(path: str) -> dict:
    """`a.b.c` → attr(attr(var a, b), c)."""
    head, *rest = path.split(".")
    node = var(head)
    for name in rest:
        node = attr(node, name)
    return node


def index(obj: dict, idx: dict) -> dict:
    return {"op": "index", "obj": obj, "index": idx}


def bin(op: str, left: dict, right: dict) -> dict:
    return {"op": op, "left": left, "right": right}


def and_(*args: dict) -> dict:
    return {"op": "and", "args": list(args)}


def or_(*args: dict) -> dict:
    return {"op": "or", "args": list(args)}


def not_(arg: dict) -> dict:
    return {"op": "not", "arg": arg}


def neg(arg: dict) -> dict:
    return {"op": "neg", "arg": arg}


def call(fn: str, *args: dict) -> dict:
    return {"op": "call", "fn": fn, "args": list(args)}


def list_(*items: dict) -> dict:
    return {"op": "list", "items": list(items)}


# ---- building blocks -------------------------------------------------------------------------------

STR, INT, FLOAT, BOOL, JSON = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {}


def list_of(t: dict) -> dict:
    return {"type": "array", "items": t}


def optional(t: dict) -> dict:
    return {"anyOf": [t, {"type": "null"}]}


def input_schema(fields: dict[str, dict], required: list[str]) -> dict:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": fields,
        "required": required,
        "additionalProperties": True,
        "x-id-field": "id" if "id" in fields else None,
    }


def sim_block(tokens: list[int], ttft_s: float = 0.01, per_token_s: float = 0.0005,
              max_concurrency: int = 64, replicas: int = 1) -> dict:
    return {"tokens": tokens, "ttft_s": ttft_s, "per_token_s": per_token_s,
            "max_concurrency": max_concurrency, "replicas": replicas}


def openai_model(name: str, env: str | None, params: dict, sim: dict) -> dict:
    return {
        "backend": "openai", "name": name,
        "url": {"env": env, "default": None} if env else None,
        "api_key": None, "params": params, "replicas": 1, "max_concurrency": 256,
        "tensor_parallel": 1, "pipeline_parallel": 1, "autoscale": None, "engine_args": {},
        "timeout_s": 120.0, "sim": sim,
    }


def llm_agent(model: str, *, system: str | None = None, prompt: str | None = None, history: bool = True,
              params: dict | None = None, extracts: list[dict] | None = None, sim: str | None = None) -> dict:
    extracts = extracts or []
    return {
        "kind": "llm", "model": model, "tool": None, "system": system, "prompt": prompt, "input": None,
        "history": history, "params": params or {}, "extracts": extracts, "sim": sim,
        "fields": [e["name"] for e in extracts] + ["text"], "replicas": 1, "max_concurrency": 1024,
    }


def tool_agent(tool: str, *, input: str, extracts: list[dict] | None = None) -> dict:
    extracts = extracts or []
    return {
        "kind": "tool", "model": None, "tool": tool, "system": None, "prompt": None, "input": input,
        "history": True, "params": {}, "extracts": extracts, "sim": None,
        "fields": [e["name"] for e in extracts] + ["exit_code", "text"], "replicas": 1, "max_concurrency": 1024,
    }


def regex(name: str, pattern: str) -> dict:
    return {"name": name, "kind": "regex", "pattern": pattern}


def json_ex(name: str, *path: str) -> dict:
    return {"name": name, "kind": "json", "path": list(path)}


def tr(to: str, when: dict | None = None, guard: str | None = None, reason: str | None = None) -> dict:
    return {"to": to, "reason": reason, "when": when, "guard": guard}


def limits(max_steps: int = 40, row_timeout_s: float = 600.0) -> dict:
    return {"max_steps": max_steps, "row_timeout_s": row_timeout_s, "call_timeout_s": 120.0,
            "retries": 3, "row_attempts": 3}


def finish(ir: dict) -> dict:
    """Fill message_schema and workflow.source_hash (sha256 of the canonical JSON of the rest)."""
    ir.setdefault("message_schema", {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object"})
    rest = copy.deepcopy(ir)
    rest["workflow"].pop("source_hash", None)
    canon = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    ir["workflow"]["source_hash"] = "sha256:" + hashlib.sha256(canon.encode()).hexdigest()
    return ir


# ---- the spec's three programs ---------------------------------------------------------------------

CORAL_TEACHER_SYSTEM = (
    "Solve the question with your partner. Question: {{ row.question }}\n"
    'Choices: {% for c in row.choices %}{{ "ABCDEFGHIJ"[loop.index0] }}) {{ c }} {% endfor %}\n'
    'End every message with "Answer: <letter>".'
)
CORAL_STUDENT_SYSTEM = (
    "Discuss the question with your partner and say whether you agree. Question: {{ row.question }}\n"
    'End every message with "Answer: <letter>".'
)


def coral() -> dict:
    answer = regex("answer", r"Answer:\s*([A-J])")
    return finish({
        "ir_version": "1.0",
        "workflow": {"name": "coral",
                     "description": "Two agents reason over a multiple-choice question until they agree"},
        "input_schema": input_schema(
            {"id": STR, "question": STR, "choices": list_of(STR), "answer": optional(STR)},
            ["id", "question", "choices"]),
        "models": {"llm": openai_model("meta-llama/Llama-3.1-8B-Instruct", "LLM_URL",
                                       {"temperature": 0.7, "max_tokens": 512}, sim_block([16, 64]))},
        "tools": {},
        "agents": {
            "teacher": llm_agent(
                "llm", system=CORAL_TEACHER_SYSTEM, prompt="{{ last.text if last else 'Begin.' }}",
                extracts=[answer],
                sim="I considered the options. Answer: {{ ['A','B','C','D'] | random }}"),
            "student": llm_agent(
                "llm", system=CORAL_STUDENT_SYSTEM, extracts=[answer],
                sim="Here is my view. Answer: {{ ['A','B','C','D'] | random }}"),
        },
        "states": {
            "start": {"agent": None, "transitions": [tr("teacher")]},
            "teacher": {"agent": "teacher", "transitions": [tr("student")]},
            "student": {"agent": "student", "transitions": [
                tr("end", and_(bin("!=", dot("student.answer"), lit(None)),
                               bin("==", dot("student.answer"), dot("teacher.answer"))),
                   "student.answer != null and student.answer == teacher.answer"),
                tr("fail", bin(">=", var("turns"), lit(20)), "turns >= 20", "no_agreement"),
                tr("teacher"),
            ]},
        },
        "limits": limits(max_steps=24),
        "output": {"fields": [
            {"name": "id", "expr": dot("row.id")},
            {"name": "answer", "expr": dot("student.answer")},
            {"name": "correct", "expr": bin("==", dot("student.answer"), dot("row.answer"))},
            {"name": "transcript", "expr": var("history")},
        ]},
    })


def curate() -> dict:
    return finish({
        "ir_version": "1.0",
        "workflow": {"name": "curate",
                     "description": "Filter documents, score them, and write a reasoning question from the good ones"},
        "input_schema": input_schema({"id": STR, "text": STR}, ["id", "text"]),
        "models": {
            "small": openai_model("meta-llama/Llama-3.2-3B-Instruct", "SMALL_URL", {"max_tokens": 8},
                                  sim_block([8, 8])),
            "large": openai_model("meta-llama/Llama-3.3-70B-Instruct", "LARGE_URL", {"max_tokens": 2048},
                                  sim_block([16, 64])),
        },
        "tools": {},
        "agents": {
            "filter": llm_agent(
                "small", system="Answer Yes or No: does this text contain reasoning worth a question?",
                prompt="{{ row.text[:4000] }}", extracts=[regex("keep", r"^(Yes|No)")],
                sim="{{ ['Yes', 'No', 'No'] | random }}"),
            "scorer": llm_agent(
                "large", history=False,
                system='Score the text 0-5 on clarity and depth. Reply as JSON {"clarity": n, "depth": n}.',
                prompt="{{ row.text[:8000] }}", extracts=[json_ex("clarity", "clarity"), json_ex("depth", "depth")],
                sim='{"clarity": {{ [0,3,4,5] | random }}, "depth": {{ [0,2,4] | random }}}'),
            "writer": llm_agent(
                "large", history=False,
                system="Write one hard question answerable from the text, then its answer in \\boxed{}.",
                prompt="{{ row.text[:8000] }}", extracts=[regex("final", r"\\boxed\{([^}]*)\}")],
                sim="Question: ... Answer: \\boxed{ {{ [1, 2, 42] | random }} }"),
        },
        "states": {
            "start": {"agent": None, "transitions": [tr("filter")]},
            "filter": {"agent": "filter", "transitions": [
                tr("fail", bin("!=", dot("filter.keep"), lit("Yes")), 'filter.keep != "Yes"', "not_reasoning"),
                tr("scorer"),
            ]},
            "scorer": {"agent": "scorer", "transitions": [
                tr("fail", or_(bin("<", dot("scorer.clarity"), lit(3)), bin("<", dot("scorer.depth"), lit(2))),
                   "scorer.clarity < 3 or scorer.depth < 2", "low_score"),
                tr("writer"),
            ]},
            "writer": {"agent": "writer", "transitions": [
                tr("fail", bin("==", dot("writer.final"), lit(None)), "writer.final == null", "no_boxed"),
                tr("end"),
            ]},
        },
        "limits": limits(),
        "output": {"fields": [
            {"name": "id", "expr": dot("row.id")},
            {"name": "question", "expr": dot("writer.text")},
            {"name": "answer", "expr": dot("writer.final")},
        ]},
    })


def coder() -> dict:
    return finish({
        "ir_version": "1.0",
        "workflow": {"name": "coder",
                     "description": "Write a function, run its tests in a sandbox, repair until they pass"},
        "input_schema": input_schema({"id": STR, "task": STR, "tests": STR}, ["id", "task", "tests"]),
        "models": {"llm": openai_model("Qwen/Qwen2.5-Coder-7B-Instruct", "LLM_URL", {}, sim_block([16, 64]))},
        "tools": {"sandbox": {"kind": "python", "timeout_s": 10.0, "memory_bytes": 268435456, "cpu_s": 10.0,
                              "network": False, "max_output_bytes": 65536, "replicas": 1, "max_concurrency": 4}},
        "agents": {
            "coder": llm_agent(
                "llm", system="Write Python that solves the task. Reply with one ```python block.",
                prompt=("Task: {{ row.task }}\n{% if runner.text %}Your last attempt failed:\n"
                        "{{ runner.text[-2000:] }}{% endif %}"),
                extracts=[regex("code", r"```python\n(.*?)```")],
                sim="```python\ndef f(x):\n    return x{{ [' + 1', ' * 2'] | random }}\n```"),
            "runner": tool_agent("sandbox", input="{{ coder.code }}\n\n{{ row.tests }}\nprint('ALL TESTS PASSED')",
                                 extracts=[regex("passed", "(ALL TESTS PASSED)")]),
        },
        "states": {
            "start": {"agent": None, "transitions": [tr("coder")]},
            "coder": {"agent": "coder", "transitions": [
                tr("runner", bin("!=", dot("coder.code"), lit(None)), "coder.code != null"),
                tr("fail", bin(">=", dot("visits.coder"), lit(3)), "visits.coder >= 3", "no_code"),
                tr("coder"),
            ]},
            "runner": {"agent": "runner", "transitions": [
                tr("end", bin("!=", dot("runner.passed"), lit(None)), "runner.passed != null"),
                tr("fail", bin(">=", dot("visits.runner"), lit(4)), "visits.runner >= 4", "tests_fail"),
                tr("coder"),
            ]},
        },
        "limits": limits(max_steps=16, row_timeout_s=300.0),
        "output": {"fields": [
            {"name": "id", "expr": dot("row.id")},
            {"name": "code", "expr": dot("coder.code")},
            {"name": "attempts", "expr": dot("visits.runner")},
        ]},
    })


def loop(max_steps: int = 5, row_timeout_s: float = 600.0, guard: dict | None = None,
         guard_text: str | None = None, template: str = "{{ turns }}", sim_model: bool = False) -> dict:
    """One agent `a` that loops on itself; `guard` (if given) ends the row; ids are positions."""
    sim = sim_block([3, 9])
    model = openai_model("m", None, {}, sim)
    if sim_model:
        model["backend"] = "sim"
    transitions = ([tr("end", guard, guard_text)] if guard is not None else []) + [tr("a")]
    return finish({
        "ir_version": "1.0",
        "workflow": {"name": "loop", "description": ""},
        "input_schema": input_schema({"n": optional(INT)}, []),
        "models": {"m": model},
        "tools": {},
        "agents": {"a": llm_agent("m", prompt=template, history=False,
                                  extracts=[regex("num", r"(\d+)"), json_ex("obj", "k")])},
        "states": {"start": {"agent": None, "transitions": [tr("a")]},
                   "a": {"agent": "a", "transitions": transitions}},
        "limits": limits(max_steps=max_steps, row_timeout_s=row_timeout_s),
        "output": {"fields": [{"name": "n", "expr": dot("row.n")}, {"name": "turns", "expr": var("turns")},
                              {"name": "last", "expr": dot("last.text")}]},
    })


def start_guarded() -> dict:
    """`start` chooses by the row: kind "x" → agent a, "skip" → end, "bad" → fail; else no_transition."""
    ir = loop(max_steps=1)
    ir["input_schema"] = input_schema({"kind": STR}, ["kind"])
    ir["states"]["start"]["transitions"] = [
        tr("a", bin("==", dot("row.kind"), lit("x")), 'row.kind == "x"'),
        tr("end", bin("==", dot("row.kind"), lit("skip")), 'row.kind == "skip"'),
        tr("fail", bin("==", dot("row.kind"), lit("bad")), 'row.kind == "bad"', "bad_kind"),
    ]
    ir["states"]["a"]["transitions"] = [tr("end")]
    ir["output"]["fields"] = [{"name": "kind", "expr": dot("row.kind")}]
    return finish(ir)


def typed_input() -> dict:
    """Every input type of the language, for row validation."""
    ir = loop(max_steps=1)
    ir["input_schema"] = input_schema(
        {"id": INT, "s": STR, "i": INT, "f": FLOAT, "b": BOOL, "j": JSON, "ls": list_of(STR),
         "lli": list_of(list_of(INT)), "o": optional(STR), "ol": optional(list_of(FLOAT))},
        ["id", "s", "i", "f", "b", "j", "ls", "lli"])
    ir["states"]["a"]["transitions"] = [tr("end")]
    ir["output"]["fields"] = [{"name": "o", "expr": dot("row.o")}, {"name": "ol", "expr": dot("row.ol")}]
    return finish(ir)
