"""What a run costs the machine, sampled from /proc while it runs (Linux).

:class:`RunMonitor` is started before ``run()`` and stopped after it. A background thread, every
``interval_s``:

* finds the run's named actors (``mx-<run_id>:...``) and their pids (one ``ping`` each),
* reads CPU time (utime + stime) and resident memory of each of them, of this process (the driver),
  and of every Ray process this process started (raylet, GCS, workers: its descendants),
* polls the sim services' token counters (a time series, for steady-state throughput),
* and at start and stop reads /proc/stat (the whole machine's busy fraction) and the load average.

CPU of a process is counted from the first time the thread sees it to the last (actors are killed
when ``run()`` returns, so up to one interval at the very end can be missed).

:class:`OtherCPU` measures the rest: the CPU of every process outside this one's tree, to tell a
measurement taken on a quiet machine from one that shared it with other jobs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Self

import ray

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process in seconds (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_rss(pid: int) -> int | None:
    """Resident set size in bytes (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return None


def descendants(pid: int) -> list[int]:
    """Pids of every process below ``pid`` (children, their children, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    kids: dict[int, list[int]] = {}
    for child, ppid in parent.items():
        kids.setdefault(ppid, []).append(child)
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def mem_total() -> int:
    """Physical memory in bytes (/proc/meminfo)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return total - idle, total


def machine_info() -> dict:
    """CPUs, memory, load average and versions: written into every result file."""
    import platform

    return {"cpus": os.cpu_count(), "mem_gib": round(mem_total() / 2**30, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "ray": ray.__version__, "platform": platform.platform()}


class Sampling:
    """Runs ``_loop`` in a daemon thread named ``name`` while used as a context manager: ``__enter__``
    starts it, ``__exit__`` sets ``_stop`` (which ``_loop`` waits on between samples) and joins it."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        raise NotImplementedError


class OtherCPU(Sampling):
    """CPU seconds used by processes outside this process's tree (other jobs on a shared machine),
    sampled every ``interval_s`` from /proc while it runs (a process that lives less than that is
    missed). Use as a context manager; ``seconds`` is the total."""

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__("bench-other-cpu")
        self.interval_s, self.seconds = interval_s, 0.0

    def _snapshot(self) -> dict[int, float]:
        mine = {os.getpid(), *descendants(os.getpid())}
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) not in mine:
                cpu = proc_cpu_s(int(entry))
                if cpu is not None:
                    out[int(entry)] = cpu
        return out

    def _loop(self) -> None:
        last = self._snapshot()
        while not self._stop.wait(self.interval_s):
            now = self._snapshot()
            self.seconds += sum(max(0.0, c - last.get(pid, c)) for pid, c in now.items())
            last = now


@dataclass(slots=True)
class _Proc:
    group: str
    cpu0: float
    cpu1: float
    rss_max: int = 0
    rss_last: int = 0


@dataclass(slots=True)
class RunMonitor:
    """Samples one run's processes; use as a context manager around ``run()``."""

    run_id: str
    interval_s: float = 0.25
    procs: dict[int, _Proc] = field(default_factory=dict)
    names: dict[str, int] = field(default_factory=dict)
    tokens: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    rss_series: list[tuple[float, int]] = field(default_factory=list)
    peak_rss_run: int = 0
    driver_rss0: int = 0
    driver_rss_max: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _t1: float = 0.0
    _m0: tuple[int, int] = (0, 0)
    _m1: tuple[int, int] = (0, 0)
    _load0: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _load1: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _self_cpu0: float = 0.0
    _self_cpu1: float = 0.0
    _thread_cpu: float = 0.0

    def __enter__(self) -> RunMonitor:
        self._t0 = time.time()
        self._m0 = machine_ticks()
        self._load0 = os.getloadavg()
        self._self_cpu0 = time.process_time()
        self.driver_rss0 = self.driver_rss_max = proc_rss(os.getpid()) or 0
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._t1 = time.time()
        self._m1 = machine_ticks()
        self._load1 = os.getloadavg()
        self._self_cpu1 = time.process_time()

    # -- sampling ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        t_cpu0 = time.thread_time()
        prefix = f"mx-{self.run_id}:"
        n, settled = 0, False
        while True:
            stopping = self._stop.is_set()
            # Ray and process-tree look-ups cost CPU: every tick until the run's actors are all
            # there (the count stopped changing), then once a second
            if not settled or n % 4 == 0 or stopping:
                before = len(self.names)
                with contextlib.suppress(Exception):   # Ray answers late or an actor is gone
                    self._discover(prefix)
                settled = len(self.names) >= 3 and len(self.names) == before
                for child in descendants(os.getpid()):
                    self._see(child, "ray_other")
            self._sample()
            if n % 2 == 0 or stopping:
                with contextlib.suppress(Exception):
                    self._poll_tokens()
            if stopping:
                break
            n += 1
            self._stop.wait(self.interval_s)
        self._thread_cpu = time.thread_time() - t_cpu0

    def _discover(self, prefix: str) -> None:
        for name in ray.util.list_named_actors():
            if not name.startswith(prefix) or name in self.names:
                continue
            pid = ray.get(ray.get_actor(name).ping.remote(), timeout=5)[1]
            self.names[name] = pid
            group = name[len(prefix):].split(":")
            g = f"agent:{group[1]}" if group[0] == "agent" else group[0]
            if pid in self.procs:
                self.procs[pid].group = g
            else:
                self._see(pid, g)

    def _see(self, pid: int, group: str) -> None:
        if pid in self.procs or pid == os.getpid():
            return
        cpu = proc_cpu_s(pid)
        if cpu is not None:
            self.procs[pid] = _Proc(group, cpu, cpu)

    def _sample(self) -> None:
        run_rss = proc_rss(os.getpid()) or 0
        self.driver_rss_max = max(self.driver_rss_max, run_rss)
        for pid, p in self.procs.items():
            cpu, rss = proc_cpu_s(pid), proc_rss(pid)
            if cpu is None or rss is None:
                continue
            p.cpu1 = cpu
            p.rss_last = rss
            p.rss_max = max(p.rss_max, rss)
            if p.group != "ray_other":
                run_rss += rss
        self.peak_rss_run = max(self.peak_rss_run, run_rss)
        self.rss_series.append((time.time(), run_rss))

    def _poll_tokens(self) -> None:
        sims = [n for n in self.names if ":sim:" in n]
        if not sims:
            return
        stats = ray.get([ray.get_actor(n).stats.remote() for n in sims], timeout=5)
        total: dict[str, int] = {}
        for s in stats:
            for m, v in s["models"].items():
                total[m] = total.get(m, 0) + v["tokens"]
        self.tokens.append((time.time(), total))

    # -- results ----------------------------------------------------------------------------------
    def cpu_by_group(self) -> dict[str, float]:
        """CPU seconds per process group (driver, agent:ROLE, sim, sink, coordinator, ray_other)."""
        out: dict[str, float] = {"driver": max(0.0, self._self_cpu1 - self._self_cpu0 - self._thread_cpu)}
        for p in self.procs.values():
            out[p.group] = out.get(p.group, 0.0) + max(0.0, p.cpu1 - p.cpu0)
        return out

    def rss_by_group(self) -> dict[str, int]:
        """Peak resident bytes per group (sum of each process's peak)."""
        out: dict[str, int] = {}
        for p in self.procs.values():
            out[p.group] = out.get(p.group, 0) + p.rss_max
        return out

    def summary(self, elapsed_s: float | None = None) -> dict:
        """CPU seconds by group, CPU utilisation of the run's processes and of all Ray processes,
        the machine's busy fraction and load averages over the monitored interval."""
        wall = max(self._t1 - self._t0, 1e-9)
        el = elapsed_s if elapsed_s and elapsed_s > 0 else wall
        ncpu = os.cpu_count() or 1
        cpu = self.cpu_by_group()
        run_cpu = sum(v for k, v in cpu.items() if k != "ray_other")
        busy = self._m1[0] - self._m0[0]
        total = max(self._m1[1] - self._m0[1], 1)
        return {"cpu_s": {k: round(v, 3) for k, v in sorted(cpu.items())},
                "run_cpu_s": round(run_cpu, 3),
                "run_cpu_util": round(run_cpu / (wall * ncpu), 3),
                "ray_cpu_util": round(sum(cpu.values()) / (wall * ncpu), 3),
                "machine_busy": round(busy / total, 3),
                "monitored_s": round(wall, 3), "elapsed_s": round(el, 3),
                "loadavg_start": [round(x, 2) for x in self._load0],
                "loadavg_end": [round(x, 2) for x in self._load1],
                "peak_rss_run": self.peak_rss_run}

    def steady_tokens_per_s(self, models: tuple[str, ...], lo: float = 0.1, hi: float = 0.8) -> float | None:
        """Tokens/s of ``models`` between the samples where their cumulative count first reaches
        ``lo`` and ``hi`` of its final value (leaves out the ramp-up and the drain at the end)."""
        series = [(t, sum(d.get(m, 0) for m in models)) for t, d in self.tokens]
        if len(series) < 3 or series[-1][1] <= 0:
            return None
        final = series[-1][1]
        a = next(((t, v) for t, v in series if v >= lo * final), None)
        b = next(((t, v) for t, v in series if v >= hi * final), None)
        if a is None or b is None or b[0] - a[0] <= 0:
            return None
        return (b[1] - a[1]) / (b[0] - a[0])
