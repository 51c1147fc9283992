"""Ray start/attach, and the names of a run's actors.

``connect`` attaches to a cluster given by ``--address``/``RAY_ADDRESS`` (which is also how a script
submitted with ``ray job submit`` finds its cluster) or, as ``ray.init()`` does, to a live cluster that
``ray start`` runs on this machine; else it starts a quiet local Ray sized to the machine (no
dashboard). Every actor of a run is a named actor, so that any actor, including one Ray has
just restarted, can find its peers by name (:class:`Topology`).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from dataclasses import dataclass, field

import ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Make sure this process is connected to Ray. Returns True when this call started local Ray."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or _started_here()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    common = {"logging_level": logging.ERROR, "log_to_driver": False, "configure_logging": False}
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address:
        why = unreachable(address)
        if why is not None:
            raise ConnectionError(f"no Ray cluster at {address!r} ({why})")
        if os.environ.get("RAY_AUTH_MODE") is None and _requires_token(address):
            _use_local_token()
        ray.init(address=address, **common)
        return False
    # (Ray enables token authentication for a new local cluster by default and warns about it on every
    # start: it stays on, without the warning.)
    # ("local": a new cluster, even where `ray start` left the address of a dead one behind.)
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **common)
    return True


def _started_here() -> str | None:
    """The address of a cluster that `ray start` runs on this machine (the one ``ray.init()`` would
    attach to), or None when there is none or the one it recorded is gone."""
    try:
        from ray._private.services import find_bootstrap_address

        address = find_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - private Ray API: without it, start a local Ray
        return None
    return address if address and unreachable(address) is None else None


def unreachable(address: str, timeout_s: float = 3.0) -> str | None:
    """Why the GCS of ``address`` (host:port or auto) cannot be reached, or None when it answers
    (ray.init itself would retry a dead address for minutes). ray:// addresses are not probed."""
    if address.startswith("ray://"):
        return None
    from ray._private.services import canonicalize_bootstrap_address

    try:
        hostport = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError) as e:
        return str(e).splitlines()[0] if str(e) else "not found"
    if hostport is None:
        return "no running cluster found"
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        return f"{hostport}: {e.strerror or e}" if isinstance(e, OSError) else f"{hostport}: {e}"
    return None


def _requires_token(address: str, timeout_s: float = 3.0) -> bool:
    """Whether the GCS at ``address`` refuses a call without an authentication token (a cluster of
    ``ray start``, whose default is token authentication) rather than answering it (one started
    without, e.g. by ``ray.cluster_utils.Cluster``). Turning token mode on for the latter makes the
    driver's actors die unscheduled, and leaving it off for the former makes ray.init retry for 20 s;
    one unauthenticated call tells them apart in milliseconds. True also when it cannot be asked."""
    if address.startswith("ray://"):
        return False
    try:
        import grpc
        from ray._private.gcs_utils import create_gcs_channel
        from ray._private.services import canonicalize_bootstrap_address
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        channel = create_gcs_channel(canonicalize_bootstrap_address(address))
    except Exception:  # noqa: BLE001 - private Ray APIs: keep the old behaviour (token if one is here)
        return True
    try:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        return False
    except grpc.RpcError:      # UNAUTHENTICATED, or no answer in time: as before, token if one is here
        return True
    finally:
        channel.close()


def _use_local_token() -> None:
    """Attaching to a cluster started with token authentication (the default of ``ray start`` since Ray
    2.5x) needs the token mode on in this process: turn it on when a token is available locally
    (``~/.ray/auth_token``, ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:   # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def tune_gc() -> None:
    """Make Python's cyclic garbage collector cheap in a message-path actor (agent, sim service, sink,
    coordinator). Objects alive now (modules, Ray's own) are frozen out of every pass, and a
    young-generation pass runs every 200,000 net allocations (Python's default: 700). A pass scans
    every young object still alive, and with 1,000 rows in flight that is the working set of the calls
    in flight (coroutines, tasks, timers, HTTP requests: 35-90k objects, ~35 ms a pass). Measured in an
    ``openai`` agent at ~2,000 calls/s (docs/benchmarks.md, the HTTP path): at 20,000 a pass ran every
    ~0.3 s, 12% of the actor's CPU; at 200,000 none ran in a 3,000-row run. The runtime's data has
    no reference cycles to wait on: messages are trees of dicts and lists, freed by reference counting
    (``tests/runtime/test_engine.py`` checks that a step leaves no cyclic garbage)."""
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)


def this_node_id() -> str:
    """Ray node id of this process (the driver's node: the sink runs there, next to the output file)."""
    return ray.get_runtime_context().get_node_id()


def actor_info() -> tuple[str, int, str]:
    """(incarnation token, pid, node id) of the calling actor process, for liveness pings."""
    ctx = ray.get_runtime_context()
    return f"{os.getpid()}@{ctx.get_node_id()[:12]}", os.getpid(), ctx.get_node_id()


@dataclass(slots=True)
class Topology:
    """Where a run's actors are: their names (``prefix`` is unique per run) and replica counts."""

    prefix: str
    namespace: str | None
    roles: dict[str, int]                      # agent role → replicas
    sims: dict[str, list[int]] = field(default_factory=dict)   # model → sim service actors hosting it
    tools: dict[str, int] = field(default_factory=dict)        # tool → tool service actors
    central: bool = False
    groups: list[list[str]] = field(default_factory=list)      # co-located roles (same replicas each)

    def group(self, role: str) -> list[str]:
        """The roles whose replicas are the same actors as ``role``'s (``[role]`` when alone)."""
        return next((g for g in self.groups if role in g), [role])

    def agent(self, role: str, i: int) -> str:
        return f"{self.prefix}:agent:{'+'.join(self.group(role))}:{i}"

    def agents(self, role: str) -> list[str]:
        return [self.agent(role, i) for i in range(self.roles[role])]

    def all_agents(self) -> list[str]:
        return list(dict.fromkeys(n for role in self.roles for n in self.agents(role)))

    def hosts(self) -> list[tuple[list[str], int]]:
        """Each agent actor kind: (the roles it hosts, replicas)."""
        out: dict[str, tuple[list[str], int]] = {}
        for role, n in self.roles.items():
            g = self.group(role)
            out.setdefault("+".join(g), (g, n))
        return list(out.values())

    def sim(self, i: int) -> str:
        return f"{self.prefix}:sim:{i}"

    def sims_of(self, model: str) -> list[str]:
        return [self.sim(i) for i in self.sims[model]]

    def all_sims(self) -> list[str]:
        return [self.sim(i) for i in sorted({i for ids in self.sims.values() for i in ids})]

    def tool(self, name: str, i: int) -> str:
        return f"{self.prefix}:tool:{name}:{i}"

    def tools_of(self, name: str) -> list[str]:
        return [self.tool(name, i) for i in range(self.tools[name])]

    @property
    def sink(self) -> str:
        return f"{self.prefix}:sink"

    @property
    def coordinator(self) -> str:
        return f"{self.prefix}:coordinator"


class Handles:
    """Cache of actor handles looked up by name (one ``ray.get_actor`` per name and process)."""

    def __init__(self, topo: Topology):
        self.topo = topo
        self._cache: dict[str, object] = {}

    def get(self, name: str):
        h = self._cache.get(name)
        if h is None:
            h = self._cache[name] = ray.get_actor(name, namespace=self.topo.namespace)
        return h

    def put(self, name: str, handle: object) -> None:
        self._cache[name] = handle
