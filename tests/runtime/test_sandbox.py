"""The python sandbox, for real: real jails, real escape attempts, real host resources to reach for.

Every escape test has a control that shows the attempt works outside the sandbox (or with the limit
lifted), so a sandbox that stopped containing would fail the test.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from matrixlang.runtime.sandbox import bwrap as sandbox
from matrixlang.runtime.sandbox.bwrap import (
    MAX_PROCESSES,
    Limits,
    SandboxFailed,
    SandboxResult,
    SandboxUnsupported,
    check_support,
    run_python,
)
from support.polling import wait_for

SPEC = {"kind": "python", "timeout_s": 10.0, "memory_bytes": 256 << 20, "cpu_s": 10.0, "network": False,
        "max_output_bytes": 65536, "replicas": 1, "max_concurrency": 4}
IS_ROOT = os.geteuid() == 0
SYSTEM_PYTHON = "/usr/bin/python3.11"  # a python that another user (nobody) can run, for the controls


def spec(**over) -> dict:
    return {**SPEC, **over}


def run(code: str, **over) -> SandboxResult:
    return run_python(textwrap.dedent(code), spec(**over))


def uid_processes(uid: int) -> list[int]:
    """Host pids whose real uid is `uid`."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as fh:
                    line = next(ln for ln in fh if ln.startswith("Uid:"))
            except (OSError, StopIteration):
                continue
            if int(line.split()[1]) == uid:
                pids.append(int(name))
    return pids


def wait_no_processes(uid: int, limit_s: float = 30.0) -> list[int]:
    end = time.monotonic() + limit_s
    while (left := uid_processes(uid)) and time.monotonic() < end:
        time.sleep(0.05)
    return left


def test_machine_supports_the_sandbox() -> None:
    assert check_support(SPEC) is None
    assert check_support(spec(network=True)) is None


def test_normal_code_with_tests_passes_and_prints() -> None:
    res = run("""
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        assert [fib(i) for i in range(8)] == [0, 1, 1, 2, 3, 5, 8, 13]
        print("fib(20) =", fib(20))
        print("ALL TESTS PASSED")
    """)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == "fib(20) = 6765\nALL TESTS PASSED\n"
    assert res.stderr == "" and res.killed_reason is None and not res.truncated and not res.timed_out
    assert res.text() == res.stdout


def test_failing_code_shows_its_traceback_with_source_lines() -> None:
    res = run("""
        print("before")
        def add(a, b):
            return a - b
        assert add(2, 2) == 4, "add is wrong"
    """)
    assert res.exit_code == 1 and res.killed_reason is None
    assert 'File "/work/main.py", line 5' in res.stderr
    assert "assert add(2, 2) == 4" in res.stderr and "AssertionError: add is wrong" in res.stderr
    assert res.text() == "before\n" + res.stderr


def test_exit_codes_and_signals_follow_the_shell() -> None:
    assert run("import sys; sys.exit(3)").exit_code == 3
    res = run("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert res.exit_code == 128 + 15 and res.killed_reason is None
    res = run("import os; os.abort()")  # SIGABRT: would dump core without RLIMIT_CORE = 0
    assert res.exit_code == 128 + 6


def test_infinite_loop_hits_the_wall_clock_timeout() -> None:
    res = run("""
        import time
        print("started")
        while True:
            time.sleep(0.01)
    """, timeout_s=1.0)
    assert res.timed_out and res.killed_reason == "timeout" and res.exit_code == 137
    assert res.stdout == "started\n"  # output written before the kill is kept
    assert res.text().endswith("[killed: wall-clock timeout]")
    assert res.duration_s >= 1.0


def test_busy_loop_hits_the_cpu_limit_before_the_timeout() -> None:
    res = run("while True:\n    pass\n", cpu_s=1.0, timeout_s=30.0)
    assert res.killed_reason == "cpu" and not res.timed_out
    assert res.exit_code == 128 + 24  # SIGXCPU


def test_memory_bomb_is_stopped_by_the_memory_limit() -> None:
    bomb = """
        chunks = []
        while True:
            chunks.append(bytearray(16 << 20))
            if len(chunks) == 20:
                print("got 320 MiB")
                break
    """
    res = run(bomb, memory_bytes=128 << 20)
    assert res.killed_reason == "memory" and res.exit_code == 1
    assert "MemoryError" in res.stderr and "got 320 MiB" not in res.stdout
    control = run(bomb, memory_bytes=1 << 30)  # the same code fits under a larger limit
    assert control.exit_code == 0 and control.stdout == "got 320 MiB\n"


def test_process_count_is_limited() -> None:
    res = run("""
        import os, signal, time
        kids = []
        while len(kids) < 500:
            try:
                pid = os.fork()
            except OSError as e:
                print("fork refused:", e.__class__.__name__)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
        print("forked", len(kids))
        for k in kids:
            os.kill(k, signal.SIGKILL)
    """)
    assert res.exit_code == 0, res.stderr
    forked = int(res.stdout.split("forked ")[1])
    assert "fork refused: BlockingIOError" in res.stdout
    assert 0 < forked < MAX_PROCESSES


def test_fork_bomb_is_contained_and_cleaned_up() -> None:
    res = run("""
        import os
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, timeout_s=2.0)
    assert res.killed_reason in ("timeout", "cpu")
    uid = int(res.stdout.split()[0])
    if IS_ROOT:
        assert uid != 0
        assert wait_no_processes(uid) == []  # nothing of the bomb survives the run
    # the machine is fine: a new snippet runs normally right after
    assert run("print('alive')").stdout == "alive\n"


@pytest.mark.skipif(not IS_ROOT, reason="finding the run's processes by uid needs the per-run uid (root)")
def test_background_processes_die_with_the_snippet() -> None:
    res = run("""
        import os, time
        print(os.getuid(), flush=True)
        if os.fork() == 0:
            os.setsid()          # try to escape the process group
            if os.fork() == 0:   # and double-fork into the background
                time.sleep(120)
            os._exit(0)
        print("parent done")
    """)
    assert res.exit_code == 0 and res.stdout.endswith("parent done\n")
    uid = int(res.stdout.split()[0])
    assert wait_no_processes(uid) == []


def named_processes(name: str) -> list[int]:
    """Host pids whose command name (/proc/PID/comm) is `name`."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as fh:
                    if fh.read().strip() == name:
                        pids.append(int(pid))
            except OSError:
                continue
    return pids


def marked_sleeper(marker: str) -> str:
    """A snippet that renames itself `marker`, forks, and sleeps in both processes."""
    return f"import os, time\nopen('/proc/self/comm', 'w').write({marker!r})\nos.fork()\ntime.sleep(60)\n"


def test_the_jail_dies_with_its_caller() -> None:
    """SIGKILL the process that called run_python: the snippet and its children die too."""
    marker = "mx" + secrets.token_hex(6)
    caller = subprocess.Popen([sys.executable, "-c", (
        "from matrixlang.runtime.sandbox.bwrap import run_python\n"
        f"run_python({marked_sleeper(marker)!r}, {{'timeout_s': 120}})")])
    try:
        assert wait_for(lambda: len(named_processes(marker)) == 2)
    finally:
        caller.kill()
        caller.wait()
    assert wait_for(lambda: not named_processes(marker), 30.0)


@pytest.fixture()
def secret_files(tmp_path_factory) -> Iterator[tuple[str, list[Path]]]:
    """A secret in root-only files: one under a tmp dir, one under the home directory."""
    token = "mx-secret-" + secrets.token_hex(8)
    tmp_secret = tmp_path_factory.mktemp("secret") / "secret.txt"
    home_secret = Path.home() / f".mx-sandbox-test-{secrets.token_hex(4)}"
    paths = [tmp_secret, home_secret]
    for p in paths:
        p.write_text(token)
        p.chmod(0o600)
    try:
        yield token, paths
    finally:
        home_secret.unlink(missing_ok=True)


def test_files_outside_the_working_dir_are_not_readable(secret_files) -> None:
    token, paths = secret_files
    attempts = [str(p) for p in paths] + [f"/proc/1/root{p}" for p in paths] + [
        "/proc/1/environ", "/etc/shadow", "/etc/passwd", str(Path(sandbox.__file__).resolve())]
    code = "import json\nout = {}\n" + "".join(
        f"try:\n    out[{a!r}] = open({a!r}).read()\nexcept OSError as e:\n    out[{a!r}] = type(e).__name__\n"
        for a in attempts) + "print(json.dumps(out))\n"
    for p in paths:  # control: the files are real and readable by this (host) process
        assert p.read_text() == token
    res = run_python(code, SPEC)
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)
    assert token not in res.stdout
    assert all(v in ("FileNotFoundError", "PermissionError") for v in got.values()), got


def test_host_file_system_is_hidden_and_read_only() -> None:
    res = run("""
        import os, sys
        print(sorted(os.listdir("/")))
        for path in ("/newfile", sys.prefix + "/evil.py", "/usr/evil"):
            try:
                open(path, "w")
                print("WROTE", path)
            except OSError as e:
                print(type(e).__name__)
    """)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    top = set(eval_list(lines[0]))
    assert top <= {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "tmp",
                   "work", *Path(sys.base_prefix).resolve().parts[1:2]}
    assert "WROTE" not in res.stdout and len(lines) == 4


def eval_list(text: str) -> list[str]:
    """Parse a printed list of strings (json, after swapping quotes)."""
    return json.loads(text.replace("'", '"'))


def test_working_dir_is_private_bounded_and_removed() -> None:
    first = run("""
        import os
        print(os.getcwd(), sorted(os.listdir(".")))
        open("state.txt", "w").write("x")
        open("/tmp/other.txt", "w").write("y")
        try:
            with open("big.bin", "wb") as fh:
                for _ in range(80):
                    fh.write(b"0" * (1 << 20))
            print("wrote 80 MiB")
        except OSError as e:
            print("disk full:", e.errno == 28)
    """, memory_bytes=64 << 20)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines() == ["/work ['main.py']", "disk full: True"]
    second = run("import os; print(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))")
    assert second.stdout == "['main.py'] ['main.py']\n"


def test_no_privileges_and_limits_are_in_force() -> None:
    res = run("""
        import os
        status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
        limits = {l[:26].strip(): l[26:].split()[:2] for l in open("/proc/self/limits").read().splitlines()[1:]}
        print(os.getuid(), int(status["CapEff"], 16), int(status["CapBnd"], 16), status["NoNewPrivs"].strip())
        for k in ("Max processes", "Max core file size", "Max address space", "Max cpu time"):
            print(k, *limits[k])
        print(sorted(os.listdir("/proc/self/fd")))
    """, memory_bytes=200 << 20, cpu_s=3.0)
    lines = res.stdout.splitlines()
    uid, cap_eff, _cap_bnd, nnp = lines[0].split()
    assert int(uid) != 0 and cap_eff == "0" and nnp == "1"
    assert lines[1:5] == [f"Max processes {MAX_PROCESSES} {MAX_PROCESSES}", "Max core file size 0 0",
                          f"Max address space {200 << 20} {200 << 20}", "Max cpu time 3 4"]
    assert lines[5] == "['0', '1', '2', '3']"  # stdio and the listing itself: no leaked host fds


def test_environment_is_scrubbed(monkeypatch) -> None:
    token = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("MX_TEST_API_KEY", token)
    res = run("""
        import os
        print(sorted(os.environ))
        for p in ("/proc/self/environ", "/proc/1/environ"):
            try:
                print(open(p, "rb").read())
            except OSError as e:
                print(type(e).__name__)
    """)
    assert res.exit_code == 0, res.stderr
    assert token not in res.stdout and "MX_TEST_API_KEY" not in res.stdout
    assert set(eval_list(res.stdout.splitlines()[0])) <= {"PATH", "HOME", "TMPDIR", "LANG", "USER",
                                                          "LOGNAME", "PWD", "LC_CTYPE"}


KERNEL_ESCAPES = textwrap.dedent("""
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    def attempt(name, rc):
        print(name, "ok" if rc == 0 else os.strerror(ctypes.get_errno()))
    # a user namespace (root inside it) then a tmpfs outside every size limit
    attempt("unshare", libc.unshare(0x10000000 | 0x00020000))
    attempt("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
    for what, call in (("memfd", lambda: os.memfd_create("m")), ("fork", os.fork)):
        try:
            pid = call()
            if what == "fork" and pid == 0:
                os._exit(0)
            print(what, "ok")
        except OSError as e:
            print(what, e.strerror)
    attempt("shmget", -1 if libc.shmget(0, 1 << 20, 0o1600) < 0 else 0)
    attempt("ptrace", libc.ptrace(16, 1, None, None))  # PTRACE_ATTACH to the jail's init
""")


def test_kernel_features_behind_the_jail_are_denied() -> None:
    res = run_python(KERNEL_ESCAPES, SPEC)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == [
        "unshare Operation not permitted", "mount Operation not permitted", "memfd Operation not permitted",
        "fork ok", "shmget Operation not permitted", "ptrace Operation not permitted"]


@pytest.mark.skipif(not IS_ROOT or not os.path.exists(SYSTEM_PYTHON),
                    reason="the control runs the attempts as another unprivileged user")
def test_control_the_same_attempts_work_for_a_plain_unprivileged_process() -> None:
    """Outside the jail, an ordinary unprivileged user can do what the sandbox denies."""
    proc = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", KERNEL_ESCAPES], user=65534, group=65534,
                          extra_groups=[], env={}, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "unshare ok" and lines[1] == "mount ok" and lines[2] == "memfd ok"
    assert lines[4] == "shmget ok"


@pytest.fixture()
def tcp_server() -> Iterator[int]:
    """A real TCP server on 127.0.0.1 that greets every client."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"hello-from-host")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join()
        srv.close()


def connect_code(port: int) -> str:
    return textwrap.dedent(f"""
        import socket
        print([n for _, n in socket.if_nameindex()])
        try:
            s = socket.create_connection(("127.0.0.1", {port}), timeout=3)
            print(s.recv(100).decode())
        except OSError as e:
            print("blocked:", type(e).__name__)
    """)


def test_socket_to_localhost_fails_with_network_off(tcp_server) -> None:
    res = run_python(connect_code(tcp_server), SPEC)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == ["['lo']", "blocked: ConnectionRefusedError"]
    control = run_python(connect_code(tcp_server), spec(network=True))
    assert control.exit_code == 0, control.stderr
    assert control.stdout.splitlines()[1] == "hello-from-host"


def test_output_flood_is_truncated_and_killed() -> None:
    res = run("""
        while True:
            print("x" * 1000)
    """, max_output_bytes=4096)
    assert res.killed_reason == "output" and res.truncated and res.exit_code == 137
    assert len(res.stdout.encode()) == 4096 and set(res.stdout) <= {"x", "\n"}
    assert res.text(4096).endswith("[killed: output limit] [output truncated]")


def test_large_output_is_truncated_but_the_run_completes() -> None:
    res = run("""
        import sys
        print("y" * 10000)
        print("done", file=sys.stderr)
    """, max_output_bytes=4096)
    assert res.exit_code == 0 and res.killed_reason is None and res.truncated
    assert res.stdout == "y" * 4096 and res.stderr == "done\n"


def test_concurrent_runs_from_threads_are_independent() -> None:
    results: dict[int, SandboxResult] = {}

    def one(i: int) -> None:
        results[i] = run(f"import os\nopen('mine', 'w').write('{i}')\nprint({i} * {i}, sorted(os.listdir('.')))")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {i: r.stdout for i, r in results.items()} == {i: f"{i * i} ['main.py', 'mine']\n" for i in range(8)}


def test_text_bounds_and_notes() -> None:
    r = SandboxResult("a" * 100, "E" * 100, 1, False, False, 0.1, None)
    assert r.text(1000) == "a" * 100 + "\n" + "E" * 100
    cut = r.text(50)
    assert cut.startswith("a" * 25 + "\n" + "E" * 25) and cut.endswith("[output truncated]")
    assert SandboxResult("", "", 137, True, False, 1.0, "timeout").text() == "[killed: wall-clock timeout]"
    assert SandboxResult.from_dict({**r.to_dict(), "text": "x"}) == r


def test_bad_specs_are_rejected() -> None:
    assert "not a python sandbox" in check_support({"kind": "shell"})
    assert "timeout_s" in check_support(spec(timeout_s=0))
    with pytest.raises(ValueError):
        run_python("print(1)", spec(memory_bytes=-1))


def test_a_jail_that_cannot_start_is_a_failure_of_the_tool_not_an_exit_code() -> None:
    """Issue 11: a limit that makes bwrap refuse (10**26 bytes, past the checker and from_spec) or the
    interpreter unable to load (1 MiB of address space) raises SandboxFailed: nothing of the snippet ran,
    so there is no exit code of it to record."""
    with pytest.raises(SandboxFailed, match=r"could not start the snippet \(exit 1\): bwrap: --size"):
        sandbox._execute(Limits(10.0, 10**26, 10.0, False, 65536), "print(1)")
    with pytest.raises(SandboxFailed, match="error while loading shared libraries"):
        run("print(1)", memory_bytes=1 << 20)
    res = run("import sys\nprint('prlimit: not me', file=sys.stderr)\nprint('out')\nsys.exit(1)")
    assert res.exit_code == 1 and res.stdout == "out\n"      # a snippet's own failure stays its exit code


def test_refuses_when_the_jail_is_missing(tmp_path) -> None:
    """A process that cannot find bwrap refuses to run the snippet and says why."""
    code = textwrap.dedent("""
        from matrixlang.runtime.sandbox.bwrap import SandboxUnsupported, check_support, run_python
        print(check_support({}))
        try:
            run_python("open('/tmp/ran', 'w')", {})
        except SandboxUnsupported as e:
            print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": str(tmp_path)}, capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.splitlines()[0].startswith("bwrap not found")
    assert out.splitlines()[1].startswith("refused: bwrap not found")
    assert issubclass(SandboxUnsupported, RuntimeError)


@pytest.mark.skipif(not IS_ROOT or not os.path.exists(SYSTEM_PYTHON),
                    reason="needs root to start a process as nobody, and a system python it can run")
def test_unprivileged_caller_gets_the_same_containment(tcp_server) -> None:
    """As a normal user (here: nobody) the jail uses a user namespace; the same attempts fail."""
    driver = textwrap.dedent(f"""
        import importlib, json, sys, types
        pkg = types.ModuleType("mxrt")  # the runtime directory as a bare package (no Ray needed)
        pkg.__path__ = [{str(Path(sandbox.__file__).resolve().parent.parent)!r}]
        sys.modules["mxrt"] = pkg
        sbx = importlib.import_module("mxrt.sandbox.bwrap")
        code = sys.stdin.read()
        print(json.dumps({{"support": sbx.check_support({{}}),
                          "res": sbx.run_python(code, {{"timeout_s": 5}}).to_dict()}}))
    """)
    snippet = connect_code(tcp_server) + textwrap.dedent("""
        import os
        print(os.getuid(), open("/proc/self/status").read().split("CapEff:")[1].split()[0])
        try:
            open("/root/.bashrc").read(); print("READ /root")
        except OSError as e:
            print(type(e).__name__)
        kids = 0
        try:
            while kids < 500:
                if os.fork() == 0:
                    import time; time.sleep(30); os._exit(0)
                kids += 1
        except OSError:
            pass
        print("forked", kids)
    """)
    proc = subprocess.run([SYSTEM_PYTHON, "-c", driver], input=snippet, user=65534, group=65534,
                          extra_groups=[], env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["support"] is None
    lines = got["res"]["stdout"].splitlines()
    assert lines[:2] == ["['lo']", "blocked: ConnectionRefusedError"]
    assert lines[2] == "65534 0000000000000000"
    assert lines[3] in ("FileNotFoundError", "PermissionError")
    assert 0 < int(lines[4].split()[1]) < MAX_PROCESSES
