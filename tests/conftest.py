"""Shared fixtures. Ray is started once per test session (≈4 s, ≈530 MiB) and shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the session's tests (no dashboard, quiet)."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        ray.init(
            address="local",   # a new cluster, whatever `ray start` left on this machine
            num_cpus=4,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    # Left running for the rest of the session; pytest exit tears it down.
