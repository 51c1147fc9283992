"""The example workflows (`workflows/*.mx`) and their sample data (`workflows/data/*.jsonl`).

Every program passes `mxc check --strict` and compiles; every sample row is valid against the
compiled `input_schema` (JSON Schema 2020-12, checked with `jsonschema`) and every line of
`bad_rows.jsonl` is not. Under the simulator (in-process engine, real sandbox for tools), every row
finishes before `limits.max_steps`, by the flow's own `end`/`fail`, and rows take different
paths. One workflow also runs end to end on Ray (the rest with `-m slow`), with the same outcomes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
from matrixlang.runtime.sandbox.bwrap import check_support, run_python
from matrixlang.runtime.semantics.engine import Engine, LLMCall, Reply

from matrixlang.compiler import compile_file

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
DATA = WORKFLOWS / "data"
PROGRAMS = sorted(WORKFLOWS.glob("*.mx"))
NAMES = [p.stem for p in PROGRAMS]
# Reasons that mean the workflow itself is broken, not that a row took a `fail` branch.
BROKEN = {"bad_input", "no_transition", "max_steps", "row_timeout", "guard_error", "template_error",
          "model_error", "tool_error", "lost"}


def mxc() -> list[str]:
    exe = shutil.which("mxc") or str(Path(sys.executable).parent / "mxc")
    assert Path(exe).exists(), "mxc is not installed: pip install -e ."
    return [exe]


def rows(name: str) -> list[str]:
    return (DATA / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def irs() -> dict[str, dict]:
    return {p.stem: compile_file(p) for p in PROGRAMS}


def test_there_are_the_spec_programs_and_more():
    assert {"coral", "curation", "coder"} <= set(NAMES)
    assert len(NAMES) >= 7


def test_every_program_passes_check_strict():
    r = subprocess.run([*mxc(), "check", "--strict", "--format", "json", *map(str, PROGRAMS)],
                       capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    bad = {Path(x["file"]).name: [(d["code"], d["line"], d["message"]) for d in x["diagnostics"]]
           for x in report if not x["ok"] or x["diagnostics"]}
    assert bad == {} and r.returncode == 0, bad


def test_every_program_compiles(irs):
    for name, ir in irs.items():
        assert ir["ir_version"] == "1.2"
        assert ir["workflow"]["source_hash"].startswith("sha256:")
        assert set(ir["states"]) == {"start", *ir["agents"]}, name
        assert compile_file(WORKFLOWS / f"{name}.mx") == ir, f"{name}: compiling twice differs"


def test_every_program_has_a_header_and_sample_data():
    data = {p.stem for p in DATA.glob("*.jsonl")} - {"bad_rows"}
    assert data == set(NAMES), f"programs without data: {set(NAMES) - data}, data without program: {data - set(NAMES)}"
    for p in PROGRAMS:
        head = p.read_text(encoding="utf-8").split("\n", 1)[0]
        assert head.startswith(f"# {p.name}:"), f"{p.name}: the first line should say what it does"
        assert f"mxc run workflows/{p.name} --input workflows/data/{p.stem}.jsonl" in p.read_text(), p.name


@pytest.mark.parametrize("name", NAMES)
def test_sample_rows_are_valid_and_ids_unique(name, irs):
    schema = irs[name]["input_schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    lines = rows(name)
    assert 8 <= len(lines) <= 30, f"{name}: {len(lines)} rows"
    ids = []
    for i, line in enumerate(lines, 1):
        row = json.loads(line)
        errors = [e.message for e in validator.iter_errors(row)]
        assert errors == [], f"{name}.jsonl:{i}: {errors}"
        ids.append(row["id"])
    assert len(set(ids)) == len(ids), f"{name}: duplicate ids"


def test_bad_rows_are_each_invalid_for_coral(irs):
    validator = jsonschema.Draft202012Validator(irs["coral"]["input_schema"])
    lines = rows("bad_rows")
    assert len(lines) >= 8
    kinds = set()
    for i, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            kinds.add("not json")
            continue
        if not isinstance(row, dict):
            kinds.add("not an object")
            continue
        errors = list(validator.iter_errors(row))
        assert errors, f"bad_rows.jsonl:{i} is a valid coral row"
        kinds.add(errors[0].validator)
    assert {"not json", "not an object", "required", "type"} <= kinds, kinds


def simulate(ir: dict, lines: list[str], seed: int = 0) -> dict:
    """Run every row through the engine: sim replies for models, the real sandbox for tools."""
    eng = Engine(ir, seed=seed, backend="sim")
    out = {}
    for pos, line in enumerate(lines):
        msg = eng.new_message(line, pos, 0.0)
        while not msg.finished:
            call = eng.prepare_call(msg)
            if isinstance(call, LLMCall):
                assert call.sim_text is not None, f"agent {call.agent} has no sim template"
                reply = Reply(call.sim_text, call.prompt_tokens, call.sim_tokens)
            else:
                res = run_python(call.input, ir["tools"][call.tool])
                reply = Reply(res.text(ir["tools"][call.tool]["max_output_bytes"]), 0, 0, res.exit_code)
            eng.apply_reply(msg, reply, (), 0.0)
        out[msg.id] = {"status": msg.status, "reason": msg.reason, "steps": msg.steps,
                       "path": tuple(h["agent"] for h in msg.history)}
    return out


@pytest.fixture(scope="module")
def simulated(irs) -> dict[str, dict]:
    if any(irs[n]["tools"] for n in NAMES) and (why := check_support({})):
        pytest.skip(f"the Python sandbox cannot run here: {why}")
    with ThreadPoolExecutor(4) as pool:
        futures = {n: pool.submit(simulate, irs[n], rows(n)) for n in NAMES}
        return {n: f.result() for n, f in futures.items()}


@pytest.mark.parametrize("name", NAMES)
def test_simulated_rows_finish_by_the_flow_and_take_different_paths(name, irs, simulated):
    res = simulated[name]
    max_steps = irs[name]["limits"]["max_steps"]
    assert len(res) == len(rows(name))
    for rid, r in res.items():
        assert r["reason"] not in BROKEN, f"{name} row {rid}: {r}"
        assert r["steps"] < max_steps, f"{name} row {rid}: {r['steps']} of {max_steps} steps"
    outcomes = {(r["status"], r["reason"]) for r in res.values()}
    assert ("ok", None) in outcomes, f"{name}: no row succeeds"
    assert len(outcomes) >= 2, f"{name}: every row ends the same way: {outcomes}"
    assert len({r["path"] for r in res.values()}) >= 3, f"{name}: rows take fewer than 3 distinct paths"


def test_simulation_is_deterministic_per_seed(irs):
    a, b = simulate(irs["debate"], rows("debate")), simulate(irs["debate"], rows("debate"))
    assert a == b
    other = simulate(irs["debate"], rows("debate"), seed=1)
    assert other != a


def run_on_ray(ir: dict, name: str, out: Path) -> dict:
    from matrixlang.runtime.control.run import RunOptions, run

    run(ir, RunOptions(input=str(DATA / f"{name}.jsonl"), output=str(out), backend="sim", seed=0,
                       progress="off", print_summary=False))
    got = {}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        meta = row["_meta"]
        assert meta["workflow"] == {"name": ir["workflow"]["name"], "hash": ir["workflow"]["source_hash"]}
        got[meta["id"]] = {"status": meta["status"], "reason": meta["reason"], "steps": meta["steps"]}
    return got


def _same_as_engine(name: str, irs, simulated, tmp_path) -> None:
    got = run_on_ray(irs[name], name, tmp_path / f"{name}.out.jsonl")
    want = {rid: {k: r[k] for k in ("status", "reason", "steps")} for rid, r in simulated[name].items()}
    assert got == want


ON_RAY_BY_DEFAULT = ("support", "coder")    # coder: its runner runs the snippets in the real sandbox


@pytest.mark.ray
@pytest.mark.parametrize("name", ON_RAY_BY_DEFAULT)
def test_workflow_runs_on_ray_like_the_engine(name, ray_local, irs, simulated, tmp_path):
    _same_as_engine(name, irs, simulated, tmp_path)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("name", [n for n in NAMES if n not in ON_RAY_BY_DEFAULT])
def test_every_workflow_runs_on_ray_like_the_engine(name, ray_local, irs, simulated, tmp_path):
    _same_as_engine(name, irs, simulated, tmp_path)
