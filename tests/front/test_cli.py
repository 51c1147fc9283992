"""CLI scripts (CUE / testscript style): `tests/front/cli/*.txt` run the real `mxc` as a subprocess.

A script is a txtar archive: the commands come first, then the files, each after a `-- NAME --` line.
The files are written to a fresh directory, where the commands run in order:

    exec mxc ARGS...        run `mxc` (`python` runs this interpreter) with shell-style quoting
    ! exec ...              the same, and assert the exit status is not 0
    status N                the last command exited with N
    stdout 'RE'             the last stdout matches the regex (Python `re`, multi-line); `! stdout` negates
    stderr 'RE'             the same for stderr
    empty stdout|stderr     nothing was printed there
    cmp stdout|stderr NAME  exactly the contents of the file NAME
    cmpfiles A B            two files are byte-identical
    json stdout             stdout is a JSON document
    env NAME=VALUE          set for every later command
    stdin NAME              the next command reads NAME on its standard input
    bytes NAME HEX          write raw bytes (for files that are not text)
    mkdir NAME              make a directory
    exists NAME             the file exists (`! exists NAME`: it does not)

Lines starting with `#` are comments.

Update mode: `MX_UPDATE_GOLDEN=1 pytest tests/front/test_cli.py` turns every `cmp stdout|stderr NAME`
that differs into a rewrite of the section NAME of its script (CUE's `CUE_UPDATE`): review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ALL_SCRIPTS = sorted((Path(__file__).parent / "cli").glob("*.txt"))
# A script whose first line is `# slow...` (it starts Ray) runs with `-m slow` only.
SLOW = [p for p in ALL_SCRIPTS if p.read_text(encoding="utf-8").startswith("# slow")]
SCRIPTS = [p for p in ALL_SCRIPTS if p not in SLOW]
SECTION = re.compile(r"^-- (.+?) --$", re.M)
UPDATE = bool(os.environ.get("MX_UPDATE_GOLDEN"))


def parse_txtar(text: str) -> tuple[str, dict[str, str]]:
    """(the script, {file name: contents}) of a txtar archive."""
    parts = SECTION.split(text)
    # The newline that ends a `-- NAME --` line belongs to the marker, not to the file.
    files = {parts[i].strip(): parts[i + 1].removeprefix("\n") for i in range(1, len(parts), 2)}
    return parts[0], files


def format_txtar(script: str, files: dict[str, str]) -> str:
    """The archive of ``script`` and ``files`` (the inverse of :func:`parse_txtar`)."""
    return script + "".join(f"-- {name} --\n{text}" for name, text in files.items())


def mxc_command() -> list[str]:
    """The installed `mxc` console script (the real entry point users run)."""
    exe = shutil.which("mxc") or str(Path(sys.executable).parent / "mxc")
    assert Path(exe).exists(), "mxc is not installed: pip install -e ."
    return [exe]


@dataclass
class Run:
    cwd: Path
    files: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    stdout: str = ""
    stderr: str = ""
    status: int | None = None
    updates: dict[str, str] = field(default_factory=dict)   # sections rewritten in update mode

    def exec(self, args: list[str]) -> None:
        prog = {"mxc": mxc_command(), "python": [sys.executable]}.get(args[0])
        assert prog is not None, f"unknown program {args[0]!r}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
        env.update({"NO_COLOR": "1", "COLUMNS": "100", **self.env})
        stdin = (self.cwd / self.stdin).read_bytes() if self.stdin else b""
        self.stdin = None
        proc = subprocess.run(prog + args[1:], cwd=self.cwd, env=env, input=stdin, capture_output=True,
                              timeout=120)
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.status = proc.returncode

    def stream(self, name: str) -> str:
        assert name in ("stdout", "stderr"), name
        return getattr(self, name)

    def step(self, line: str) -> None:
        neg = line.startswith("! ")
        words = shlex.split(line[2:] if neg else line)
        cmd, args = words[0], words[1:]
        out = f"\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        if cmd == "exec":
            self.exec(args)
            assert (self.status != 0) if neg else (self.status == 0), f"`{line}` exited {self.status}{out}"
        elif cmd == "status":
            assert self.status == int(args[0]), f"exit status {self.status}, want {args[0]}{out}"
        elif cmd in ("stdout", "stderr"):
            found = re.search(args[0], self.stream(cmd), re.M) is not None
            assert found != neg, f"{cmd} {'matches' if neg else 'does not match'} {args[0]!r}{out}"
        elif cmd == "empty":
            assert self.stream(args[0]) == "", f"{args[0]} is not empty{out}"
        elif cmd == "cmp":
            want = (self.cwd / args[1]).read_text(encoding="utf-8")
            got = self.stream(args[0])
            if UPDATE and got != want and args[1] in self.files:
                self.updates[args[1]] = got
                (self.cwd / args[1]).write_text(got, encoding="utf-8")
                return
            assert got == want, f"{args[0]} differs from {args[1]}:\n--- got ---\n{got}--- want ---\n{want}"
        elif cmd == "cmpfiles":
            a, b = (self.cwd / args[0]).read_bytes(), (self.cwd / args[1]).read_bytes()
            assert a == b, f"{args[0]} and {args[1]} differ"
        elif cmd == "json":
            json.loads(self.stream(args[0]))
        elif cmd == "env":
            key, _, value = args[0].partition("=")
            self.env[key] = value
        elif cmd == "stdin":
            self.stdin = args[0]
        elif cmd == "bytes":
            (self.cwd / args[0]).write_bytes(bytes.fromhex("".join(args[1:])))
        elif cmd == "exists":
            assert (self.cwd / args[0]).exists() != neg, f"{args[0]} {'exists' if neg else 'does not exist'}"
        elif cmd == "mkdir":
            (self.cwd / args[0]).mkdir()
        else:
            raise AssertionError(f"unknown script command {cmd!r}")


def run_script(path: Path, workdir: Path) -> None:
    script, files = parse_txtar(path.read_text(encoding="utf-8"))
    for name, text in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text, encoding="utf-8")
    run = Run(workdir, files)
    for lineno, line in enumerate(script.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            run.step(line)
        except AssertionError as exc:
            raise AssertionError(f"{path.name}:{lineno}: {line}\n{exc}") from None
    if run.updates:
        path.write_text(format_txtar(script, {**files, **run.updates}), encoding="utf-8")


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 8


@pytest.fixture(scope="module")
def script_results(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Exception | None]:
    """Every script's outcome. Scripts run concurrently (each starts several `mxc` processes, and most
    of a process's time is interpreter start-up); the commands within one script run in order."""

    # pytest's mktemp is not thread-safe: make every work directory before the threads start.
    work = {path: tmp_path_factory.mktemp(path.stem) for path in SCRIPTS}

    def one(path: Path) -> Exception | None:
        try:
            run_script(path, work[path])
        except Exception as exc:  # reported by the script's own test
            return exc
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(SCRIPTS, pool.map(one, SCRIPTS), strict=True))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_cli_script(path: Path, script_results: dict[Path, Exception | None]) -> None:
    failure = script_results[path]
    if failure is not None:
        raise failure


@pytest.mark.slow
@pytest.mark.parametrize("path", SLOW, ids=[p.stem for p in SLOW])
def test_cli_slow_script(path: Path, tmp_path: Path) -> None:
    run_script(path, tmp_path)


# ---- the script runner itself must be able to fail ---------------------------------------------

@pytest.fixture(scope="module")
def checked_ok(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A run that has checked a clean program (exit 0, `ok.mx: ok` on stdout, nothing on stderr)."""
    work = tmp_path_factory.mktemp("runner")
    (work / "ok.mx").write_text((Path(__file__).parent / "golden" / "clean_coral.mx").read_text(encoding="utf-8"),
                                encoding="utf-8")
    run = Run(work, {})
    run.step("exec mxc check ok.mx")
    return run


@pytest.mark.parametrize("step", [
    "status 1",               # wrong status
    "stdout 'error'",         # a regex that does not match
    "! stdout 'ok'",          # a negated regex that matches
    "empty stdout",           # output where none was expected
    "cmp stdout ok.mx",       # different contents
    "! exists ok.mx",         # a file that exists
    "! exec mxc check ok.mx", # a command that succeeds
])
def test_runner_rejects(step: str, checked_ok: Run) -> None:
    with pytest.raises(AssertionError):
        checked_ok.step(step)


def test_runner_rejects_bad_json(checked_ok: Run) -> None:
    with pytest.raises(json.JSONDecodeError):
        checked_ok.step("json stdout")


def test_txtar_sections() -> None:
    text = "exec x\n-- a.mx --\nline 1\nline 2\n-- b/c.txt --\n\n-- e --\n"
    script, files = parse_txtar(text)
    assert script == "exec x\n"
    assert files == {"a.mx": "line 1\nline 2\n", "b/c.txt": "\n", "e": ""}
    assert format_txtar(script, files) == text


def test_update_mode_rewrites_the_section_a_cmp_names(tmp_path: Path, monkeypatch) -> None:
    script = tmp_path / "s.txt"
    script.write_text("exec mxc check ok.mx\ncmp stdout want.txt\n\n-- ok.mx --\n"
                      + (Path(__file__).parent / "golden" / "clean_coral.mx").read_text(encoding="utf-8")
                      + "-- want.txt --\nstale\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="differs from want.txt"):
        run_script(script, tmp_path / "a")
    monkeypatch.setattr(sys.modules[__name__], "UPDATE", True)
    run_script(script, tmp_path / "b")
    assert parse_txtar(script.read_text(encoding="utf-8"))[1]["want.txt"] == "ok.mx: ok\n"
    monkeypatch.setattr(sys.modules[__name__], "UPDATE", False)
    run_script(script, tmp_path / "c")
