"""The vLLM adapter: the Ray Serve deployment class that holds one async vLLM engine per replica.

This is the only module of matrixlang that imports vLLM, and only inside a replica (``VLLMServer``'s
constructor): importing this module needs Ray, not vLLM. ``serve_deploy`` builds the deployment
options and the engine arguments from the IR and deploys one Serve application per ``vllm`` model.

A replica answers ``chat(request)`` with a plain dict:

- request: ``{"messages": [{"role", "content"}, ...], "params": {...}, "request_id": str}``; a message
  may also carry ``token_ids`` (:func:`pack_ids` bytes) and ``tokenizer`` (a replica's ``tokenizer_id``):
  the exact ids of a reply of this model, spliced into the prompt (below); ``params`` are the call's
  sampling settings (OpenAI names: ``max_tokens``, ``temperature``, ``top_p``,
  ``stop``, ``seed``, ``presence_penalty``, ``frequency_penalty``; any other ``SamplingParams`` field
  is passed through).
- reply: ``{"text", "prompt_tokens", "completion_tokens", "finish_reason", "replica", "token_ids",
  "tokenizer"}`` (``token_ids``: the generated ids as :func:`pack_ids` bytes, without a final end-of-
  sequence token, or None when they do not stand for the text: a stop string cut it), or
  ``{"error": why, "final": True}`` when the request itself is unusable (a prompt longer than
  ``max_model_len``, an unknown sampling parameter, a chat template that fails): retrying cannot help,
  so the caller ends the row as ``error`` with that reason. Engine failures raise: the caller retries
  (on another replica) and Serve's health check (``check_health``) replaces the dead replica.

The prompt is the model's chat template applied to the messages (``add_generation_prompt``), or, for
a tokenizer without a template, ``role: content`` lines. Token-exact histories (docs/vllm.md): a
message with ``token_ids`` of this replica's ``tokenizer_id`` is rendered as a sentinel, and the ids
are spliced in where the sentinel is (:func:`splice_prompt_ids`), so the prompt of an agent's next call
starts with the ids of its last prompt and reply and vLLM's prefix cache hits; re-tokenizing the reply's
text would not give back the same ids. Token counts are the engine's own: the prompt's token ids and
the generated ids.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
import uuid
from array import array
from typing import Any

from ..semantics.message import without_runtime_keys

# OpenAI request fields that are not sampling settings (dropped), and renamed ones.
TRANSPORT_KEYS = frozenset({"stream", "stream_options", "user", "model", "messages", "mx_sim"})
RENAMED = {"max_completion_tokens": "max_tokens"}


def engine_classes() -> tuple[type, type, type]:
    """(AsyncEngineArgs, the async engine class, SamplingParams) of the installed vLLM."""
    from vllm import AsyncEngineArgs, SamplingParams

    try:   # vLLM >= 0.10: the V1 engine; AsyncLLMEngine is an alias of it
        from vllm.v1.engine.async_llm import AsyncLLM as Engine
    except ImportError:   # pragma: no cover - older vLLM
        from vllm import AsyncLLMEngine as Engine
    return AsyncEngineArgs, Engine, SamplingParams


def sampling_fields(sampling_cls: type) -> frozenset[str]:
    """The keyword arguments ``SamplingParams`` accepts (msgspec struct fields or __init__ params)."""
    fields = getattr(sampling_cls, "__struct_fields__", None)
    if fields:
        return frozenset(fields)
    import inspect

    return frozenset(p for p in inspect.signature(sampling_cls).parameters if p != "self")


def sampling_kwargs(params: dict, allowed: frozenset[str]) -> dict:
    """SamplingParams keyword arguments from a call's params; ValueError names what vLLM cannot take."""
    out: dict[str, Any] = {}
    bad = []
    for k, v in params.items():
        if k in TRANSPORT_KEYS or v is None:
            continue
        k = RENAMED.get(k, k)
        if k == "n" and v != 1:
            raise ValueError(f"n = {v!r}: one reply per call only")
        if k == "stop" and isinstance(v, str):
            v = [v]
        if k in allowed:
            out[k] = v
        else:
            bad.append(k)
    if bad:
        raise ValueError(f"unknown sampling parameter{'s' * (len(bad) > 1)} for vLLM: {', '.join(sorted(bad))}")
    return out


def render_prompt(tokenizer: Any, messages: list[dict]) -> str:
    """The prompt text: the chat template with a generation prompt, or ``role: content`` lines."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join([*lines, "assistant:"])


def pack_ids(ids: Any) -> bytes:
    """Token ids as compact bytes (little-endian int32), the form they travel and are kept in."""
    a = array("i", ids)
    if sys.byteorder != "little":   # pragma: no cover - big-endian hosts
        a.byteswap()
    return a.tobytes()


def unpack_ids(data: bytes) -> list[int]:
    """Inverse of :func:`pack_ids`."""
    a = array("i")
    a.frombytes(data)
    if sys.byteorder != "little":   # pragma: no cover
        a.byteswap()
    return a.tolist()


def splice_prompt_ids(tokenizer: Any, messages: list[dict], tokenizer_id: str) -> list[int] | None:
    """The prompt ids with the exact ``token_ids`` of the messages that carry them for ``tokenizer_id``:
    the template is rendered with a unique sentinel as each such message's content, the text between
    sentinels is encoded (no special tokens added: the template writes them) and the ids go in between.
    None when no message has usable ids, or when the template does not put each sentinel exactly once,
    in order (the caller then renders the text as usual)."""
    marks: dict[int, str] = {}
    nonce = uuid.uuid4().hex
    for i, m in enumerate(messages):
        if m.get("token_ids") is not None and m.get("tokenizer") == tokenizer_id:
            marks[i] = f"\u27e6mx{nonce}:{i}\u27e7"
    if not marks:
        return None
    plain = [{"role": m["role"], "content": marks.get(i, m["content"])} for i, m in enumerate(messages)]
    try:
        text = render_prompt(tokenizer, plain)
    except Exception:  # noqa: BLE001 - a template that chokes on the sentinel: the text path decides
        return None
    ids: list[int] = []
    pos = 0
    for i, mark in marks.items():
        at = text.find(mark, pos)
        if at < 0 or text.count(mark) != 1:
            return None
        if at > pos:
            ids += tokenizer.encode(text[pos:at], add_special_tokens=False)
        ids += unpack_ids(messages[i]["token_ids"])
        pos = at + len(mark)
    if pos < len(text):
        ids += tokenizer.encode(text[pos:], add_special_tokens=False)
    return ids


class VLLMServer:
    """One Serve replica: an async vLLM engine (see the module docstring)."""

    def __init__(self, model: str, engine_kwargs: dict, env: dict[str, str] | None = None,
                 cpu: dict | None = None) -> None:
        for k, v in (env or {}).items():
            os.environ.setdefault(k, str(v))
        self.cpu_bind = None
        if cpu and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            self.cpu_bind = cpu_binding(sorted(os.sched_getaffinity(0)), _local_rank(),
                                        int(cpu["cpus_per_worker"]), int(cpu["workers"]))
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = self.cpu_bind
        t0 = time.monotonic()
        args_cls, engine_cls, self._sampling = engine_classes()
        self._allowed = sampling_fields(self._sampling)
        self.model = model
        self.engine = engine_cls.from_engine_args(args_cls(**engine_kwargs))
        self.tokenizer = self.engine.get_tokenizer()
        self.tokenizer_id = str(engine_kwargs.get("tokenizer") or engine_kwargs["model"])
        self.eos_ids = _eos_ids(self.tokenizer, self.engine)
        self.max_model_len = int(self.engine.model_config.max_model_len)
        self.start_s = time.monotonic() - t0
        self.replica = _replica_id()
        self._ids = itertools.count()
        self.served = self.failed = self.rejected = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.spliced = self.unspliced = 0      # calls with history ids spliced in / ids given but not usable

    async def chat(self, request: dict) -> dict:
        """One chat completion; see the module docstring for the request and reply."""
        try:
            ids = self.prompt_ids(request["messages"])
            kwargs = sampling_kwargs(dict(request.get("params") or {}), self._allowed)
            if len(ids) >= self.max_model_len:
                raise ValueError(f"the prompt is {len(ids)} tokens; max_model_len is {self.max_model_len}")
            room = self.max_model_len - len(ids)
            kwargs["max_tokens"] = min(int(kwargs.get("max_tokens") or room), room)
            sampling = self._sampling(**kwargs)
        except (ValueError, TypeError, KeyError) as e:
            self.rejected += 1
            return {"error": f"{type(e).__name__}: {e}", "final": True}
        rid = f"{request.get('request_id') or 'mx'}-{self.replica}-{next(self._ids)}"
        final = None
        try:
            async for out in self.engine.generate({"prompt_token_ids": ids}, sampling, rid):
                final = out
        except Exception as e:  # noqa: BLE001 - classified below
            if _is_client_error(e):
                self.rejected += 1
                return {"error": f"{type(e).__name__}: {e}", "final": True}
            self.failed += 1
            raise
        if final is None or not final.outputs:
            self.failed += 1
            raise RuntimeError(f"vLLM returned no output for request {rid}")
        choice = final.outputs[0]
        ptok = len(final.prompt_token_ids or ids)
        ctok = len(choice.token_ids)
        self.served += 1
        self.prompt_tokens += ptok
        self.completion_tokens += ctok
        return {"text": choice.text, "prompt_tokens": ptok, "completion_tokens": ctok,
                "finish_reason": choice.finish_reason, "replica": self.replica,
                "token_ids": self._reply_ids(choice), "tokenizer": self.tokenizer_id}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The prompt's token ids: history ids spliced in where messages carry this tokenizer's, else
        the rendered text encoded."""
        if any(m.get("token_ids") is not None for m in messages):
            ids = splice_prompt_ids(self.tokenizer, messages, self.tokenizer_id)
            if ids is not None:
                self.spliced += 1
                return ids
            self.unspliced += 1
        text = render_prompt(self.tokenizer, without_runtime_keys(messages))
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _reply_ids(self, choice: Any) -> bytes | None:
        """The generated ids to keep with the reply: None when a stop string cut the text (the ids
        would say more than the text); a final end-of-sequence id is dropped (the template closes the
        turn with its own end token)."""
        if isinstance(getattr(choice, "stop_reason", None), str):
            return None
        ids = list(choice.token_ids)
        if choice.finish_reason == "stop" and ids and ids[-1] in self.eos_ids:
            ids.pop()
        return pack_ids(ids)

    async def check_health(self) -> None:
        """Serve's periodic health check: raises when the engine is dead."""
        await self.engine.check_health()

    def info(self) -> dict:
        """This replica's identity and counters."""
        return {"replica": self.replica, "pid": os.getpid(), "model": self.model,
                "max_model_len": self.max_model_len, "engine_start_s": self.start_s, "cpu_bind": self.cpu_bind,
                "served": self.served, "failed": self.failed, "rejected": self.rejected,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "tokenizer": self.tokenizer_id, "spliced": self.spliced, "unspliced": self.unspliced,
                "prefix_cache": prefix_cache_counts()}

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            with contextlib.suppress(Exception):   # interpreter teardown
                engine.shutdown()


def cpu_binding(cores: list[int], local_rank: int, cpus_per_worker: int, workers: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the replica of rank ``local_rank`` on its node: consecutive
    slices of ``cpus_per_worker`` of the allowed ``cores``, one per engine worker ("0,1|2,3" for two),
    the replicas of a node taking successive slices (wrapping around when there are more than cores)."""
    n = len(cores)
    start = local_rank * cpus_per_worker * workers
    return "|".join(",".join(str(cores[(start + w * cpus_per_worker + j) % n]) for j in range(cpus_per_worker))
                    for w in range(workers))


def _eos_ids(tokenizer: Any, engine: Any) -> frozenset[int]:
    """The ids that end a generation: the tokenizer's end-of-sequence id and the model's generation
    config ones (what vLLM stops on without ``ignore_eos``)."""
    out = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        out.add(eos)
    with contextlib.suppress(Exception):   # a model without a generation config
        gen = engine.model_config.try_get_generation_config() or {}
        more = gen.get("eos_token_id")
        out.update([more] if isinstance(more, int) else (more or []))
    return frozenset(out)


def _local_rank() -> int:
    """This replica's rank among its deployment's replicas on this node (0 outside Serve)."""
    try:
        from ray import serve

        return int(serve.get_replica_context().rank.local_rank)
    except Exception:  # noqa: BLE001 - outside Serve, or a Ray without ranks
        return 0


PREFIX_CACHE_METRICS = {"vllm:prefix_cache_queries": "queries", "vllm:prefix_cache_hits": "hits"}


def prefix_cache_counts() -> dict[str, int] | None:
    """This process's vLLM prefix-cache counters in tokens, ``{"queries", "hits"}``, read from the
    engine's Prometheus counters; None where vLLM keeps none (stats off, other versions)."""
    try:
        from prometheus_client import REGISTRY
        out = {}
        for metric in REGISTRY.collect():
            key = PREFIX_CACHE_METRICS.get(metric.name)
            if key is not None:
                out[key] = int(sum(s.value for s in metric.samples if s.name.endswith("_total")))
        return out if len(out) == len(PREFIX_CACHE_METRICS) else None
    except Exception:  # noqa: BLE001 - counters are a report, never a failure
        return None


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside Serve (a plain actor or a test)
        return f"pid{os.getpid()}"


def _is_client_error(e: BaseException) -> bool:
    """A request error (4xx-like) of vLLM: validation failures and the like."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:   # pragma: no cover - older vLLM
        return isinstance(e, ValueError)
    return isinstance(e, (VLLMClientError, ValueError))
