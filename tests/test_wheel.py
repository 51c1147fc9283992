"""The wheel ships everything `mxc` needs: built from a copy of the repo, installed into a virtual
environment that cannot see the checkout or its editable install, and run from a directory outside
the checkout.

The default run's venv has no system site-packages; its dependencies (Ray, lark, ...) come from the test
interpreter's site-packages through a plain path entry (a ``.pth`` line), which Python adds to
``sys.path`` without running the ``.pth`` files found there, so the editable install's import hook never
loads. The slow test installs the wheel with its dependencies into a venv of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".venv", ".hypothesis",
                                ".pytest_cache", ".ruff_cache", "out", "*.pyc")
# Source folder -> installed package: the fixed layout of the repository.
ROOTS = {"matrixlang": "matrixlang", "runtime": "matrixlang/runtime", "grammar": "matrixlang/grammar"}
# Modules that may import an optional extra the default install does not carry.
OPTIONAL = {"matrixlang.runtime.backends.vllm_serve": "vllm"}

Installed = tuple[Path, Path, dict[str, str]]


def _run(cmd: list[str | Path], cwd: Path, env: dict[str, str] | None = None,
         check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", NO_COLOR="1", RAY_USAGE_STATS_ENABLED="0")
    return env


def _venv(where: Path) -> Path:
    """A venv without pip and without system site-packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", where], cwd=where.parent)
    return where


def _venv_site(venv: Path) -> Path:
    out = _run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=venv).stdout.strip()
    return Path(out)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)  # build from a copy: no build/ or egg-info in the checkout
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", dist, src], cwd=tmp)
    (whl,) = dist.glob("matrixlang-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """(the wheel, the venv, an environment that cannot see the checkout)."""
    venv = _venv(tmp_path_factory.mktemp("venv") / "v")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index",
          wheel], cwd=venv)
    # The dependencies, as plain path entries: no .pth file there runs, so no editable install loads.
    deps = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if Path(p).is_dir()]
    (_venv_site(venv) / "_deps.pth").write_text("".join(f"{p}\n" for p in deps), encoding="utf-8")
    return wheel, venv, _clean_env(venv)


def test_wheel_holds_every_source_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [str(f) for src, dst in ROOTS.items() for f in (ROOT / src).rglob("*")
               if f.suffix in (".py", ".lark") and "__pycache__" not in f.parts
               and f"{dst}/{f.relative_to(ROOT / src).as_posix()}" not in names]
    assert not missing, f"the wheel lacks {missing}"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mxc = matrixlang.cli:entry" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "grammar/", "runtime/", "bench/")) for n in names)


def test_every_module_imports_from_the_venv(installed: Installed, tmp_path: Path) -> None:
    _, venv, env = installed
    probe = """
import importlib, json, pkgutil, sys
import matrixlang
hooks = [type(f).__module__ for f in sys.meta_path if "editable" in type(f).__module__.lower()]
done, failed = [], {}
for info in pkgutil.walk_packages(matrixlang.__path__, "matrixlang."):
    if info.name.endswith(".__main__"):
        continue
    try:
        mod = importlib.import_module(info.name)
        done.append((info.name, mod.__file__))
    except ModuleNotFoundError as exc:
        failed[info.name] = exc.name
print(json.dumps({"hooks": hooks, "done": done, "failed": failed, "path": sys.path}))
"""
    out = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=tmp_path, env=env).stdout)
    assert out["hooks"] == [], "the editable install's import hook is active in the venv"
    # the checkout is not on the path: neither its root nor a folder whose `matrixlang` is the checkout's
    # (a venv kept inside the checkout, with the checkout's path in its own, is fine)
    own = (ROOT / "matrixlang").resolve()
    assert not [p for p in out["path"] if p and (Path(p).resolve() == ROOT.resolve()
                                                  or (Path(p) / "matrixlang").resolve() == own)], out["path"]
    site_dir = _venv_site(venv).resolve()
    for name, file in out["done"]:
        assert Path(file).resolve().is_relative_to(site_dir), (name, file)
    assert out["failed"].items() <= OPTIONAL.items(), "modules that do not import from the wheel"
    modules = {name for name, _ in out["done"]}
    assert {"matrixlang.cli", "matrixlang.commands.run", "matrixlang.runtime.control.run", "matrixlang.runtime.actors.sink"} <= modules


def test_installed_mxc_works_outside_the_checkout(installed: Installed, tmp_path: Path) -> None:
    _, venv, env = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    shutil.copy(ROOT / "workflows" / "coral.mx", work / "coral.mx")
    vpy, mxc = venv / "bin" / "python", venv / "bin" / "mxc"

    assert "usage: mxc" in _run([mxc, "--help"], cwd=work, env=env).stdout
    assert _run([mxc, "check", "--strict", "coral.mx"], cwd=work, env=env).stdout == "coral.mx: ok\n"
    _run([mxc, "compile", "coral.mx", "-o", "coral.json"], cwd=work, env=env)
    ir = json.loads((work / "coral.json").read_text(encoding="utf-8"))
    assert ir["workflow"]["name"] == "coral"
    assert list(ir["agents"]) == ["student", "teacher"]
    # The same IR as the checkout's compiler makes: nothing depends on where the package lives.
    from matrixlang.compiler import compile_file, dumps
    assert (work / "coral.json").read_text(encoding="utf-8") == dumps(compile_file(ROOT / "workflows" / "coral.mx"))

    graph = _run([mxc, "graph", "coral.mx", "--format", "mermaid"], cwd=work, env=env).stdout
    assert graph.startswith(("flowchart", "graph", "%%")) and "teacher" in graph and "student" in graph
    _run([mxc, "fmt", "coral.mx", "--check"], cwd=work, env=env)
    assert _run([mxc, "fmt", "coral.mx"], cwd=work, env=env).stdout == (work / "coral.mx").read_text(encoding="utf-8")

    # Diagnostics work too (syntax errors use the grammar's terminal names).
    (work / "bad.mx").write_text((work / "coral.mx").read_text(encoding="utf-8")
                                 .replace("teacher -> student", "teacher => student"), encoding="utf-8")
    bad = _run([mxc, "check", "bad.mx"], cwd=work, env=env, check=False)
    assert bad.returncode == 1
    assert "error[E001]: expected `->`, found `=`" in bad.stderr
    assert "internal error" not in bad.stderr
    assert _run([vpy, "-m", "matrixlang", "--version"], cwd=work, env=env).stdout.startswith("mxc ")


def _tiny_run(mxc: Path, work: Path, env: dict[str, str]) -> None:
    shutil.copy(ROOT / "workflows" / "coral.mx", work / "coral.mx")
    rows = (ROOT / "workflows" / "data" / "coral.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (work / "in.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    run = _run([mxc, "run", "coral.mx", "--input", "in.jsonl", "--output", "out.jsonl", "--backend", "sim",
                "--summary", "summary.json"], cwd=work, env=env, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    out = [json.loads(line) for line in (work / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(out) == 4
    assert json.loads((work / "summary.json").read_text(encoding="utf-8"))["rows"] == 4


@pytest.mark.ray
def test_installed_mxc_runs_a_workflow(installed: Installed, tmp_path: Path) -> None:
    _, venv, env = installed
    _tiny_run(venv / "bin" / "mxc", tmp_path, env)


@pytest.mark.slow
def test_wheel_with_its_dependencies_in_a_venv_of_its_own(wheel: Path, tmp_path: Path) -> None:
    """pip resolves the wheel's own dependencies (from the index or pip's cache): nothing of this
    interpreter's site-packages is visible."""
    venv = _venv(tmp_path / "v")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel], cwd=tmp_path,
         timeout=1200)
    env = _clean_env(venv)
    work = tmp_path / "work"
    work.mkdir()
    _tiny_run(venv / "bin" / "mxc", work, env)
