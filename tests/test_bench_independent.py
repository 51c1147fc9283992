"""bench/ and scripts/ stand on their own: no module there imports from tests/ (``tests.*``, the
``support`` package, a ``test_*`` module or ``conftest``) nor puts a tests/ folder on ``sys.path``.
Their workloads live in bench/workloads/ and bench/programs.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_MODULES = ("tests", "support", "conftest")


def _from_tests(module: str) -> bool:
    top = module.split(".", 1)[0]
    return top in TEST_MODULES or top.startswith("test_")


def _mentions_tests(node: ast.AST, names: dict[str, ast.AST], depth: int = 0) -> bool:
    """Whether ``node`` holds a string naming a tests/ folder, through names assigned in the module."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and (
                sub.value.strip("/") == "tests" or sub.value.startswith("tests/") or "/tests" in sub.value):
            return True
        if isinstance(sub, ast.Name) and sub.id in names and depth < 3 and _mentions_tests(
                names[sub.id], names, depth + 1):
            return True
    return False


def offences(source: str) -> list[str]:
    """The imports from tests/ and the ``sys.path`` changes that add a tests/ folder, in ``source``."""
    tree = ast.parse(source)
    names = {t.id: n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
             for t in n.targets if isinstance(t, ast.Name)}
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, f"import {a.name}") for a in node.names if _from_tests(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _from_tests(node.module):
            out.append((node.lineno, f"from {node.module} import ..."))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and ast.unparse(node.func.value) == "sys.path" and _mentions_tests(node, names)):
            out.append((node.lineno, ast.unparse(node)))
    return [f"line {n}: {what}" for n, what in sorted(out)]


def _modules() -> list[Path]:
    return sorted(p for d in ("bench", "scripts") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_bench_and_scripts_do_not_import_from_tests(path: Path) -> None:
    assert offences(path.read_text(encoding="utf-8")) == []


def test_the_scan_finds_what_it_looks_for() -> None:
    bad = '''
import sys
from pathlib import Path
HERE = Path(__file__).parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))
sys.path.append("/work/x/tests/runtime")
from support import ir_fixtures as F
import tests.support.polling
from test_vllm import WORKFLOW
'''
    assert [o.split(":")[0] for o in offences(bad)] == [f"line {n}" for n in (6, 7, 8, 9, 10)]
    ok = '''
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent.parent))
from bench.programs import coral
reason = "tests"
'''
    assert offences(ok) == []
