"""Package discovery for the fixed layout: ``matrixlang/``, ``runtime/`` and ``grammar/`` at the top level
install as ``matrixlang``, ``matrixlang.runtime`` and ``matrixlang.grammar``, each with every subpackage
found on disk, so that a new subpackage cannot be left out of the wheel. Everything else is in
pyproject.toml."""

from setuptools import find_packages, setup

ROOTS = {"matrixlang": "matrixlang", "matrixlang.runtime": "runtime", "matrixlang.grammar": "grammar"}


def _packages() -> list[str]:
    found: list[str] = []
    for name, folder in ROOTS.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_packages(folder)]
    return found


setup(packages=_packages(), package_dir=ROOTS)
