"""`python -m matrixlang` is `mxc`."""

from .cli import entry

entry()
