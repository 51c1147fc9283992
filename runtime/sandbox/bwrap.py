"""The code sandbox behind `tool kind = "python"`: run one snippet in a fresh, contained process.

Each call of `run_python` starts a new isolated interpreter (`python -I -S -u -B`) inside a
bubblewrap (`bwrap`) jail and waits for it. No Ray here: `matrixlang.runtime.actors.tool_service` wraps
this in an actor pool. See docs/sandbox.md for the full containment statement; in short:

- namespaces: new PID, IPC, UTS and mount namespaces, and a new network namespace (only a
  loopback with nothing listening) unless `network = true`;
- file system: a read-only view of `/usr` and the interpreter's prefix, nothing else of the host
  (no /etc except ld.so.cache/localtime, no /home, /root, /tmp, /var, /work); the working directory
  `/work` is a private tmpfs of at most `memory_bytes`, gone when the snippet ends; `/` read-only;
- identity: as root, the jail drops to a fresh unprivileged uid/gid per run (no capabilities, no
  supplementary groups, no_new_privs) so RLIMIT_NPROC is enforced and counts this run only; as a
  normal user, a user namespace (nested ones disabled) gives the same per-run process count;
- limits: RLIMIT_AS = memory_bytes, RLIMIT_CPU = cpu_s (SIGXCPU, then SIGKILL 1 s later),
  RLIMIT_NPROC = MAX_PROCESSES, RLIMIT_CORE = 0, RLIMIT_NOFILE = MAX_OPEN_FILES, a wall-clock
  timeout that kills the jail (its PID namespace dies with it), output read incrementally and
  kept up to `max_output_bytes` per stream; a snippet that floods far past that is killed;
- environment: only PATH, HOME, TMPDIR, LANG, USER, LOGNAME; nothing is inherited.

If this machine cannot enforce that (no bwrap, no namespaces), `check_support` says why and
`run_python` refuses with `SandboxUnsupported`; it never runs a snippet with weaker isolation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from ..names import TOOL_DEFAULTS
from . import seccomp

MAX_PROCESSES = 64  # RLIMIT_NPROC: tasks (processes and threads) the snippet may have at once
MAX_OPEN_FILES = 1024  # RLIMIT_NOFILE
OUTPUT_KILL_FACTOR = 16  # a snippet that writes more than this × max_output_bytes is killed
OUTPUT_KILL_MIN_BYTES = 1 << 20  # ... but never before 1 MiB
# Per-run uids (as root) are drawn at random from [UID_BASE, UID_BASE + UID_SPAN): above the ranges
# distributions and systemd give to users and containers, below 2**31. Two jails that drew the same
# uid would only share RLIMIT_NPROC: their PID, mount and IPC namespaces keep them apart.
UID_BASE = 0x78000000
UID_SPAN = 1 << 24
WORKDIR = "/work"
SCRIPT = f"{WORKDIR}/main.py"
DEFAULTS: dict[str, Any] = {  # docs/ir.md "Tools"; cpu_s defaults to timeout_s
    **{k: TOOL_DEFAULTS[k] for k in ("timeout_s", "memory_bytes", "network", "max_output_bytes")},
    "cpu_s": TOOL_DEFAULTS["timeout_s"],
}
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORKDIR,
    "TMPDIR": WORKDIR,
    "LANG": "C.UTF-8",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
}
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_NET_ETC_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/ssl",
                  "/etc/ca-certificates")
_NOTES = {
    "timeout": "wall-clock timeout",
    "cpu": "CPU time limit",
    "memory": "memory limit",
    "output": "output limit",
}


class SandboxUnsupported(RuntimeError):
    """The sandbox cannot enforce the requested limits on this machine; nothing was run."""


class SandboxFailed(RuntimeError):
    """The jail could not start the snippet (bwrap, setpriv or prlimit refused, or the interpreter could
    not load under the limits): a tool error, not the snippet's exit code."""


# The tools of the jail's chain report their own failures as "NAME: message" on stderr; the dynamic
# loader reports an interpreter it cannot map (an address-space limit too small) as "EXE: error while
# loading shared libraries". A snippet that printed one of these itself, with no stdout, and exited
# non-zero would end as a tool error too: only its own call is affected.
_JAIL_TOOLS = ("bwrap", "setpriv", "prlimit")


@dataclass(slots=True)
class SandboxResult:
    """The outcome of one snippet. `exit_code` follows the shell: death by signal N is 128 + N."""

    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    truncated: bool
    duration_s: float
    killed_reason: str | None  # "timeout" | "memory" | "cpu" | "output" | None

    def text(self, max_chars: int = DEFAULTS["max_output_bytes"]) -> str:
        """What an agent sees: stdout, then stderr if non-empty, then a note if cut or killed."""
        out, err = self.stdout, self.stderr
        if len(out) + len(err) > max_chars:
            err = err[: max(max_chars // 2, max_chars - len(out))]
            out = out[: max_chars - len(err)]
        body = out if not err else (out + ("" if not out or out.endswith("\n") else "\n") + err)
        notes = []
        if self.killed_reason:
            notes.append(f"[killed: {_NOTES.get(self.killed_reason, self.killed_reason)}]")
        if self.truncated or len(self.stdout) + len(self.stderr) > max_chars:
            notes.append("[output truncated]")
        if notes:
            body += ("" if not body or body.endswith("\n") else "\n") + " ".join(notes)
        return body

    def to_dict(self) -> dict[str, Any]:
        """The result as plain data (what crosses Ray)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxResult:
        """Inverse of `to_dict` (extra keys such as "text" are ignored)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


MAX_SECONDS = 365 * 24 * 3600.0   # as the checker's (matrixlang/values.py)
MAX_BYTES = 1024**5


@dataclass(frozen=True, slots=True)
class Limits:
    """The enforced subset of a tool spec, validated."""

    timeout_s: float
    memory_bytes: int
    cpu_s: float
    network: bool
    max_output_bytes: int

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Limits:
        """Validate `spec` (missing or null keys take the IR defaults); ValueError on bad values."""
        kind = spec.get("kind", "python")
        if kind != "python":
            raise ValueError(f"tool kind {kind!r} is not a python sandbox")
        merged = {**DEFAULTS, **{k: v for k, v in spec.items() if k in DEFAULTS and v is not None}}
        lim = cls(
            timeout_s=float(merged["timeout_s"]),
            memory_bytes=int(merged["memory_bytes"]),
            cpu_s=float(merged["cpu_s"]),
            network=bool(merged["network"]),
            max_output_bytes=int(merged["max_output_bytes"]),
        )
        for name in ("timeout_s", "memory_bytes", "cpu_s", "max_output_bytes"):
            value = getattr(lim, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"tool spec: {name} must be a positive number, got {value!r}")
            top = MAX_SECONDS if name.endswith("_s") else MAX_BYTES
            if value > top:
                raise ValueError(f"tool spec: {name} is {value!r}, more than the sandbox takes ({top:g})")
        return lim


# ---------------------------------------------------------------------------------------------
# The jail command line
# ---------------------------------------------------------------------------------------------


def _privileged() -> bool:
    return os.geteuid() == 0


def _interpreter() -> tuple[str, list[str]]:
    """The interpreter to run (this one, resolved) and the host directories it needs, read-only."""
    exe = os.path.realpath(sys.executable)
    dirs = ["/usr"]
    for d in (os.path.realpath(sys.base_prefix), os.path.dirname(exe)):
        if not any(d == b or d.startswith(b.rstrip("/") + "/") for b in dirs):
            dirs.append(d)
    return exe, dirs


def _ancestors(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def _bwrap_argv(lim: Limits, uid: int | None, code_fd: int, seccomp_fd: int) -> list[str]:
    """The full command: bwrap jail → (setpriv to `uid` when root) → prlimit → python."""
    exe, ro_dirs = _interpreter()
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox"]
    if not lim.network:
        argv.append("--unshare-net")
    if uid is None:  # unprivileged caller: a user namespace, and no nested ones
        argv += ["--unshare-user", "--disable-userns"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    made: set[str] = set()
    for d in ro_dirs:
        for parent in _ancestors(d):
            if parent not in made and parent not in ro_dirs:
                made.add(parent)
                argv += ["--perms", "0755", "--dir", parent]
        argv += ["--ro-bind", d, d]
    for f in _ETC_FILES + (_NET_ETC_FILES if lim.network else ()):
        argv += ["--ro-bind-try", f, f]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", str(lim.memory_bytes), "--perms", "1777", "--tmpfs", WORKDIR,
             "--perms", "0444", "--file", str(code_fd), SCRIPT,
             "--symlink", WORKDIR, "/tmp",
             "--remount-ro", "/", "--chdir", WORKDIR, "--seccomp", str(seccomp_fd), "--clearenv"]
    for key, value in _ENV.items():
        argv += ["--setenv", key, value]
    argv.append("--")
    if uid is not None:
        argv += [shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={uid}",
                 "--clear-groups", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
    cpu = max(1, math.ceil(lim.cpu_s))
    argv += [shutil.which("prlimit") or "prlimit", f"--as={lim.memory_bytes}", f"--cpu={cpu}:{cpu + 1}",
             f"--nproc={MAX_PROCESSES}", "--core=0", f"--nofile={MAX_OPEN_FILES}", "--"]
    argv += [exe, "-I", "-S", "-u", "-B", SCRIPT]
    return argv


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _take_uid() -> int:
    with _uid_lock:
        while True:
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


def _collect(proc: subprocess.Popen, deadline: float, bound: int) -> tuple[bytes, bytes, bool, str | None]:
    """Read stdout/stderr until both close, keeping `bound` bytes each; stop early on timeout/flood."""
    kill_after = max(OUTPUT_KILL_FACTOR * bound, OUTPUT_KILL_MIN_BYTES)
    bufs = (bytearray(), bytearray())
    total, truncated = 0, False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, 0)
        sel.register(proc.stderr, selectors.EVENT_READ, 1)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(bufs[0]), bytes(bufs[1]), truncated, "timeout"
            for key, _ in sel.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                total += len(chunk)
                buf = bufs[key.data]
                room = bound - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(chunk) > room:
                    truncated = True
                if total > kill_after:
                    return bytes(bufs[0]), bytes(bufs[1]), True, "output"
    return bytes(bufs[0]), bytes(bufs[1]), truncated, None


def _data_fd(name: str, data: bytes) -> int:
    """A memory file holding `data`, positioned at its start (bwrap reads it to the end)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _spawn(lim: Limits, code: str, uid: int | None) -> subprocess.Popen:
    code_fd = _data_fd("matrixlang-snippet", code.encode("utf-8", "replace"))
    try:
        filter_fd = _data_fd("matrixlang-seccomp", seccomp.program())
    except BaseException:
        os.close(code_fd)
        raise
    try:
        return subprocess.Popen(
            _bwrap_argv(lim, uid, code_fd, filter_fd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env={}, cwd="/", close_fds=True, pass_fds=(code_fd, filter_fd),
            start_new_session=True,
        )
    finally:
        os.close(code_fd)
        os.close(filter_fd)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the jail's process group and reap it; its PID namespace dies with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _execute(lim: Limits, code: str) -> SandboxResult:
    """Run `code` in the jail; no support check (callers do it)."""
    uid = _take_uid() if _privileged() else None
    start = time.monotonic()
    deadline = start + lim.timeout_s
    try:
        proc = _spawn(lim, code, uid)
        try:
            out, err, truncated, reason = _collect(proc, deadline, lim.max_output_bytes)
            if reason is None:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    reason = "timeout"
            if reason is not None:
                _kill(proc)
        finally:
            proc.stdout.close()
            proc.stderr.close()
            if proc.poll() is None:
                _kill(proc)
    finally:
        if uid is not None:
            _release_uid(uid)
    code_ = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if reason is None and code_ != 0 and not stdout and _jail_failure(stderr):
        raise SandboxFailed(f"the sandbox could not start the snippet (exit {code_}): "
                            f"{stderr.strip()[-500:]}")
    if reason is None:
        if code_ in (128 + signal.SIGXCPU, 128 + signal.SIGKILL):
            reason = "cpu"  # only RLIMIT_CPU sends these unasked (SIGKILL at the hard limit)
        elif code_ != 0 and stderr.rstrip().rsplit("\n", 1)[-1].startswith("MemoryError"):
            reason = "memory"
    return SandboxResult(stdout=stdout, stderr=stderr, exit_code=code_, timed_out=reason == "timeout",
                         truncated=truncated, duration_s=time.monotonic() - start, killed_reason=reason)


def _jail_failure(stderr: str) -> bool:
    """Whether ``stderr`` (of a run that exited non-zero with no stdout) is the jail's own failure."""
    first = stderr.lstrip().split("\n", 1)[0]
    tools = [*_JAIL_TOOLS, *(shutil.which(t) for t in _JAIL_TOOLS)]
    if any(t and first.startswith(f"{t}: ") for t in tools):
        return True
    exe = _interpreter()[0]
    return any(first.startswith(f"{e}: error while loading shared libraries")
               for e in {exe, os.path.realpath(sys.executable), sys.executable})


def run_python(code: str, spec: dict[str, Any]) -> SandboxResult:
    """Run `code` in a fresh sandboxed interpreter under `spec`'s limits; blocking, thread-safe.

    Raises SandboxUnsupported when the limits cannot be enforced here, SandboxFailed when the jail
    could not start the snippet, ValueError on a bad spec.
    """
    lim = Limits.from_spec(spec)
    reason = _support(lim.network)
    if reason is not None:
        raise SandboxUnsupported(reason)
    return _execute(lim, code)


# ---------------------------------------------------------------------------------------------
# Support check: a real probe run, verified from the inside
# ---------------------------------------------------------------------------------------------

_PROBE = r"""
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
userns = libc.unshare(0x10000000)
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
limits = {l[:26].strip(): l[26:].split() for l in open("/proc/self/limits").read().splitlines()[1:]}
print(json.dumps({
    "uid": os.getuid(), "cap_eff": int(status["CapEff"].strip(), 16),
    "no_new_privs": status["NoNewPrivs"].strip(), "ifaces": [n for _, n in socket.if_nameindex()],
    "nproc": limits["Max processes"][0], "core": limits["Max core file size"][0],
    "root": sorted(os.listdir("/")), "seccomp": status["Seccomp"].strip(),
    "userns": [userns, ctypes.get_errno()], "cwd": os.getcwd(), "env": sorted(os.environ),
}))
"""
_support_lock = threading.Lock()
_support_cache: dict[tuple[bool, bool], tuple[str | None, float]] = {}
RETRY_PROBE_S = 30.0  # a failed probe is repeated after this long; a passed one is kept


def _probe(network: bool) -> str | None:
    try:
        seccomp.program()
    except ValueError as exc:
        return str(exc)
    for tool in ("bwrap", "prlimit") + (("setpriv",) if _privileged() else ()):
        if shutil.which(tool) is None:
            pkg = "bubblewrap" if tool == "bwrap" else "util-linux"
            return f"{tool} not found: install the Debian package {pkg} (scripts/setup.sh installs it)"
    lim = Limits.from_spec({"timeout_s": 20.0, "network": network})
    try:
        res = _execute(lim, _PROBE)
    except (OSError, SandboxFailed) as exc:
        return f"the sandbox could not start: {exc}"
    if res.exit_code != 0:
        return f"the sandbox could not start (exit {res.exit_code}): {res.stderr.strip()[-500:]}"
    try:
        got = json.loads(res.stdout)
    except ValueError:
        return f"the sandbox probe printed no report: {res.stdout[:200]!r}"
    problems = []
    if got["uid"] == 0 and _privileged():
        problems.append("the snippet runs as uid 0")
    if got["cap_eff"] != 0:
        problems.append("the snippet keeps capabilities")
    if got["no_new_privs"] != "1":
        problems.append("no_new_privs is not set")
    if got["seccomp"] != "2" or got["userns"] != [-1, errno.EPERM]:
        problems.append(f"the seccomp filter is not in force (unshare gave {got['userns']})")
    if got["nproc"] != str(MAX_PROCESSES) or got["core"] != "0":
        problems.append("rlimits are not applied")
    if not network and set(got["ifaces"]) - {"lo"}:
        problems.append(f"network interfaces are visible: {got['ifaces']}")
    if got["cwd"] != WORKDIR or set(got["env"]) - set(_ENV) - {"PWD", "LC_CTYPE"}:
        problems.append("working directory or environment not as set up")
    if problems:
        return "the sandbox does not contain snippets here: " + "; ".join(problems)
    return None


def _support(network: bool) -> str | None:
    key = (_privileged(), network)
    with _support_lock:
        reason, when = _support_cache.get(key, ("not probed", -math.inf))
        if reason is not None and time.monotonic() - when > RETRY_PROBE_S:
            reason = _probe(network)
            _support_cache[key] = (reason, time.monotonic())
        return reason


def check_support(spec: dict[str, Any]) -> str | None:
    """None if `spec`'s limits can be enforced on this machine, else the reason (probed once)."""
    if not sys.platform.startswith("linux"):
        return f"the python sandbox needs Linux namespaces; this is {sys.platform}"
    try:
        lim = Limits.from_spec(spec)
    except (ValueError, TypeError) as exc:
        return f"bad tool spec: {exc}"
    return _support(lim.network)
