"""The wheel ships everything `mxc` needs: built from a copy of the repo, installed in a fresh venv,
and run from a directory outside the checkout on a workflow copied there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".hypothesis",
                                ".pytest_cache", ".ruff_cache", "out", "*.pyc")


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the wheel, the venv, an environment that cannot see the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)  # build from a copy: no build/ or egg-info in the checkout
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=tmp)
    (wheel,) = dist.glob("matrixlang-*.whl")
    venv = tmp / "venv"
    # System site-packages spare reinstalling Ray; the repo's own editable install is shadowed below.
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp)
    vpy = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index", "--ignore-installed",
          wheel], cwd=tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1")
    return wheel, venv, env


def test_wheel_contains_the_grammar_and_the_runtime(installed: tuple[Path, Path, dict[str, str]]) -> None:
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "matrixlang/grammar/matrix.lark" in names
    assert "matrixlang/parser.py" in names and "matrixlang/runtime/__init__.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mxc = matrixlang.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "grammar/", "runtime/")) for n in names)


def test_installed_mxc_works_outside_the_checkout(installed: tuple[Path, Path, dict[str, str]],
                                                  tmp_path: Path) -> None:
    _, venv, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "workflows" / "coral.mx", work / "coral.mx")
    vpy, mxc = venv / "bin" / "python", venv / "bin" / "mxc"

    # The package, its grammar and the console script all come from the venv, not the repo.
    where = _run([vpy, "-c", "import importlib.resources as r, matrixlang, matrixlang.parser as p; "
                  "print(matrixlang.__file__); print(r.files('matrixlang.grammar') / 'matrix.lark'); "
                  "print(len(p.grammar_text()))"], cwd=work, env=env).stdout.split()
    assert all(Path(x).resolve().is_relative_to(venv.resolve()) for x in where[:2]), where
    assert not any(str(ROOT) in x for x in where), where
    assert int(where[2]) > 1000

    assert _run([mxc, "check", "--strict", "coral.mx"], cwd=work, env=env).stdout == "coral.mx: ok\n"
    _run([mxc, "compile", "coral.mx", "-o", "coral.json"], cwd=work, env=env)
    ir = json.loads((work / "coral.json").read_text(encoding="utf-8"))
    assert ir["workflow"]["name"] == "coral"
    assert list(ir["agents"]) == ["student", "teacher"]
    assert ir["states"]["student"]["transitions"][0]["to"] == "end"
    # The same IR as the checkout's compiler makes: nothing depends on where the package lives.
    from matrixlang.compiler import compile_file, dumps
    assert (work / "coral.json").read_text(encoding="utf-8") == dumps(compile_file(ROOT / "workflows" / "coral.mx"))

    # Diagnostics work too (syntax errors use the grammar's terminal names).
    (work / "bad.mx").write_text((work / "coral.mx").read_text(encoding="utf-8")
                                 .replace("teacher -> student", "teacher => student"), encoding="utf-8")
    bad = _run([mxc, "check", "bad.mx"], cwd=work, env=env, check=False)
    assert bad.returncode == 1
    assert "error[E001]: expected `->`, found `=`" in bad.stderr
    assert "internal error" not in bad.stderr
    version = _run([vpy, "-m", "matrixlang", "--version"], cwd=work, env=env).stdout
    assert version.startswith("mxc ")
