"""Exceptions that carry diagnostics (and so source locations) out of the front end."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .diagnostics import Diagnostic


class MxError(Exception):
    """A program has errors; `diagnostics` says where and why."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        first = diagnostics[0].message if diagnostics else "error"
        super().__init__(f"{len(diagnostics)} diagnostic(s); first: {first}")


class InternalError(Exception):
    """A bug in mxc itself (never the user's fault)."""
