"""`mxc run` refuses unusable input, output and options with exit status 2 and a clear message,
before starting Ray (the runs themselves are tested in test_run_semantics / test_run_resume)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import ir_fixtures as F

from matrixlang.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ir = tmp_path / "coral.json"
    ir.write_text(json.dumps(F.coral()))
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"id": "a", "question": "q", "choices": ["x"]}) + "\n")
    return {"ir": ir, "in": inp, "out": tmp_path / "out.jsonl", "dir": tmp_path}


def mxc_run(capsys, *args: str) -> tuple[int, str]:
    code = main(["run", *map(str, args)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--replicas", "teacher"], "--replicas expects AGENT=N"),
    (["--replicas", "nobody=2"], "no agent 'nobody'"),
    (["--replicas", "teacher=0"], "must be at least 1"),
    (["--max-in-flight", "0"], "--max-in-flight must be at least 1"),
    (["--limit", "-1"], "--limit must be >= 0"),
    (["--trials", "0"], "--trials must be at least 1"),
    (["--until-ok", "0"], "--until-ok must be at least 1"),
    (["--drivers", "0"], "--drivers must be at least 1"),
    (["--drivers", "3", "--max-in-flight", "2"], "more than --max-in-flight"),
])
def test_bad_options_exit_2(capsys, files, extra, message):
    code, err = mxc_run(capsys, files["ir"], "--input", files["in"], "--output", files["out"], "--backend", "sim",
                        *extra)
    assert code == 2 and message in err
    assert not files["out"].exists()


def test_missing_input_and_existing_output_exit_2(capsys, files):
    code, err = mxc_run(capsys, files["ir"], "--input", files["dir"] / "nope.jsonl", "--output", files["out"],
                        "--backend", "sim")
    assert code == 2 and "no such file" in err
    (files["dir"] / "empty").mkdir()
    code, err = mxc_run(capsys, files["ir"], "--input", files["dir"] / "empty", "--output", files["out"])
    assert code == 2 and "no *.parquet shards" in err
    (files["dir"] / "bad.parquet").write_text("not parquet")
    code, err = mxc_run(capsys, files["ir"], "--input", files["dir"] / "bad.parquet", "--output", files["out"])
    assert code == 2 and "cannot be opened" in err and "Traceback" not in err
    files["out"].write_text('{"kept": true}\n')
    code, err = mxc_run(capsys, files["ir"], "--input", files["in"], "--output", files["out"], "--backend", "sim")
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert files["out"].read_text() == '{"kept": true}\n'      # untouched


def test_unusable_workflows(capsys, files):
    bad_ir = files["dir"] / "bad.json"
    bad_ir.write_text(json.dumps({**F.coral(), "ir_version": "9.0"}))
    code, err = mxc_run(capsys, bad_ir, "--input", files["in"], "--output", files["out"], "--backend", "sim")
    assert code == 2 and "ir_version" in err
    code, err = mxc_run(capsys, files["dir"] / "x.json", "--input", files["in"], "--output", files["out"])
    assert code == 1 and "x.json" in err
    broken = files["dir"] / "broken.mx"
    broken.write_text((ROOT / "workflows" / "coral.mx").read_text().replace("-> student", "-> studnet", 1))
    code, err = mxc_run(capsys, broken, "--input", files["in"], "--output", files["out"], "--backend", "sim")
    assert code == 1 and "studnet" in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_dead_cluster_address_exits_2_at_once(files, how):
    """In a process of its own: this test session's Ray is up, and a connected process stays on it."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:          # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["run", str(files["ir"]), "--input", str(files["in"]), "--output", str(files["out"]), "--backend", "sim"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if how == "flag":
        args += ["--address", f"127.0.0.1:{port}"]
    else:
        env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    proc = subprocess.run([sys.executable, "-m", "matrixlang", *args], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "no Ray cluster at" in proc.stderr and "ray start --head" in proc.stderr
    assert "internal error" not in proc.stderr and not files["out"].exists()


def test_every_flag_reaches_the_run_options(files, monkeypatch):
    import matrixlang.runtime.control.run as runmod

    seen = {}

    def fake_run(ir, opts):
        seen["ir"], seen["opts"] = ir, opts
        return {}

    monkeypatch.setattr(runmod, "run", fake_run)
    code = main(["run", str(files["ir"]), "-i", str(files["in"]), "-o", str(files["out"]), "--backend", "sim",
                 "--max-in-flight", "7", "--schedule", "batch", "--orchestrator", "central", "--seed", "42",
                 "--overwrite", "--summary", str(files["dir"] / "s.json"), "--limit", "3",
                 "--offload-threshold", "1024", "--address", "127.0.0.1:6390", "--replicas", "teacher=3",
                 "--replicas", "student=2", "--progress", "plain", "--adaptive-concurrency", "off",
                 "--trials", "3", "--until-ok", "9", "--drivers", "2"])
    assert code == 0
    o = seen["opts"]
    assert (o.input, o.output, o.backend) == (str(files["in"]), str(files["out"]), "sim")
    assert (o.max_in_flight, o.schedule, o.orchestrator, o.seed) == (7, "batch", "central", 42)
    assert (o.overwrite, o.resume, o.summary, o.limit) == (True, False, str(files["dir"] / "s.json"), 3)
    assert (o.offload_threshold, o.address, o.progress, o.coalesce) == (1024, "127.0.0.1:6390", "plain", True)
    assert o.replicas == {"teacher": 3, "student": 2} and o.adaptive_concurrency is False
    assert (o.trials, o.until_ok, o.drivers) == (3, 9, 2)
    assert seen["ir"]["workflow"]["name"] == "coral"
    main(["run", str(files["ir"]), "-i", str(files["in"]), "-o", str(files["out"]), "--resume"])
    o = seen["opts"]
    assert (o.resume, o.overwrite, o.backend, o.schedule, o.orchestrator, o.max_in_flight) == (
        True, False, None, "row", "p2p", 256)
    assert o.adaptive_concurrency is True                    # on unless turned off
    assert (o.trials, o.until_ok) == (None, None)            # the program's limits decide


def test_help_names_the_formats_and_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for word in ("--trials", "--until-ok", "--drivers", ".parquet", "hf:PATH[:SPLIT]", ".jsonl.zst", "journal"):
        assert word in out, word
