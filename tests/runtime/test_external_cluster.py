"""`mxc run` on a cluster it did not start: a `ray start --head` cluster (token authentication on, its
default), attached with --address, with RAY_ADDRESS, and as the entrypoint of `ray job submit`.

The head runs as `ray start --block` in its own process group, so that stopping it ends only its own
processes (`ray stop` would also end the test session's Ray), with a RAY_TMPDIR of its own, where it
records its address (`ray_current_cluster`) for `ray.init()` on this machine to find: so the test
session's Ray never sees it, and the clients given that RAY_TMPDIR do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.slow]   # ~40 s: a head node with its dashboard (jobs API)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




@pytest.fixture(scope="module")
def head(tmp_path_factory):
    ray_bin = shutil.which("ray") or pytest.skip("no `ray` CLI on PATH")
    gcs, dash = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="mxh", dir="/tmp")    # short: Ray's socket paths live below it
    log = Path(tmp) / "head.log"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=tmp)
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [ray_bin, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash), "--ray-client-server-port", str(free_port()),
             # ports of their own: the test session's Ray holds the defaults (its dashboard agent on
             # 52365 made this head's jobs API answer "No available agent to submit job")
             "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
             "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
             "--disable-usage-stats"],
            stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def dashboard_up() -> bool:
        if proc.poll() is not None:
            return True
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                return True
        except OSError:
            return False

    assert wait_for(dashboard_up, 180.0, 0.5) and proc.poll() is None, log.read_text()[-3000:]
    info = {"gcs": f"127.0.0.1:{gcs}", "api": f"http://127.0.0.1:{dash}", "env": env, "proc": proc}
    yield info
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)          # --block: the head stops its processes on SIGTERM
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def coral_args(out: Path, summary: Path) -> list[str]:
    return ["run", str(ROOT / "workflows/coral.mx"), "--input", str(ROOT / "workflows/data/coral.jsonl"),
            "--output", str(out), "--backend", "sim", "--summary", str(summary), "--progress", "plain"]


def check_run(out: Path, summary: Path) -> dict:
    ids = [json.loads(line)["_meta"]["id"] for line in out.read_text().splitlines()]
    n_in = len((ROOT / "workflows/data/coral.jsonl").read_text().splitlines())
    assert len(ids) == n_in and len(set(ids)) == n_in
    s = json.loads(summary.read_text())
    assert s["rows"] == n_in
    return s["cluster"]


def mxc(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matrixlang", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def port_of(address: str) -> str:
    return address.rpartition(":")[2]


@pytest.mark.parametrize("how", ["flag", "env", "found"])
def test_mxc_run_attaches_with_address_ray_address_or_the_one_ray_start_runs(head, tmp_path, how):
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    args, env = coral_args(out, summary), dict(head["env"])
    env.pop("RAY_ADDRESS", None)
    if how == "flag":
        args += ["--address", head["gcs"]]
    elif how == "env":
        env["RAY_ADDRESS"] = head["gcs"]
    proc = mxc(args, env)             # "found": no address, as ray.init() does: the cluster of `ray start`
    assert proc.returncode == 0, proc.stderr[-3000:]
    cluster = check_run(out, summary)
    assert cluster["started"] is False and port_of(cluster["address"]) == port_of(head["gcs"])


def test_mxc_run_as_a_ray_job(head, tmp_path):
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    env = {**head["env"], "RAY_API_SERVER_ADDRESS": head["api"], "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    entry = [sys.executable, "-m", "matrixlang", *coral_args(out, summary)]
    proc = subprocess.run([shutil.which("ray"), "job", "submit", "--", *entry], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr
    check_run(out, summary)


def test_after_the_head_is_gone_a_local_ray_is_started(head, tmp_path):
    """`ray start` leaves the address of its cluster behind when killed; ray.init() would try it."""
    stop(head["proc"])
    assert (Path(head["env"]["RAY_TMPDIR"]) / "ray" / "ray_current_cluster").exists()
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    env = dict(head["env"])
    env.pop("RAY_ADDRESS", None)
    proc = mxc(coral_args(out, summary), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cluster = check_run(out, summary)
    assert cluster["started"] is True and port_of(cluster["address"]) != port_of(head["gcs"])
