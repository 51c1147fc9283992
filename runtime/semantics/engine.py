"""The workflow semantics as plain Python (no Ray): admit a row, prepare each step's call, apply its reply,
choose the next state, write the output row. Peer-to-peer agents and a central driver share this code.

A step is `call = engine.prepare_call(msg, texts)` → the caller obtains a `Reply` (model, simulator or
tool) → `engine.apply_reply(msg, reply, texts, now)`. `texts[i]` is the text of `msg.history[i]` when
the caller resolved it (offloaded entries); inline entries are read directly. `history_need(state)`
says which texts a step can read, so the caller fetches only those; a needed text that is neither
supplied nor inline raises MissingText (a caller bug, never a row failure).

Semantics fixed here (docs/ir.md leaves them open):
- `seed_key = f"{seed}:{row id}:{steps done}"`. Under the simulator, `random.Random(seed_key)` first draws
  `sim_tokens` from the model's `sim.tokens` (clipped to the agent's `max_tokens`), then feeds the `sim`
  template's `random` filter; system/prompt/input templates draw from `Random(f"{seed_key}:{role}")`.
- `max_steps` and `row_timeout` are checked after a step, only when the chosen transition leads to an
  agent: a row that reaches `end` or `fail` keeps that outcome. (The agent actor also cuts off a step
  in flight when the row's `row_timeout` runs out.)
- Regex extracts and `matches` are bounded in time (extract.REGEX_TIMEOUT_S): a search over it fails
  the row with `regex_timeout`.
- A finished message has `state` "end" (status ok) or "fail" (failed/error).
- A tool agent without an `input` template receives "".
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..ir import ModelSpec, ToolSpec, load_ir_specs
from ..names import AGENT_DEFAULTS, CONTEXT_NAMES
from .expr import Compiled, ExprError, compile_expr, reads
from .extract import Extractor, RegexTimeout
from .message import ERROR, FAILED, ID_DUPLICATE, ID_FIELD, ID_POSITION, OK, RUNNING, Message, trial_id
from .rows import BadRow, RowValidator
from .templates import LazyRandom, MissingText, RenderError, Template, compile_template

NEEDS = ("none", "last", "all")


class StepError(Exception):
    """A step could not be prepared or applied; `reason` is the row failure code (e.g. template_error)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(slots=True)
class LLMCall:
    """What an LLM agent sends to its model (`model` is the IR's models key)."""

    agent: str
    model: str
    messages: list[dict]
    params: dict
    sim_text: str | None
    sim_tokens: int
    prompt_tokens: int
    seed_key: str


@dataclass(slots=True)
class ToolCall:
    """What a tool agent sends to its tool (`tool` is the IR's tools key)."""

    agent: str
    tool: str
    input: str


@dataclass(slots=True)
class Reply:
    """A step's result: the reply text (a tool's output), token usage and, for tools, the exit code.
    A ``vllm`` model's reply also has its generated ``token_ids`` (packed int32 bytes) and the
    ``tokenizer`` they belong to (docs/vllm.md "Token-exact histories")."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    exit_code: int | None = None
    token_ids: bytes | None = None
    tokenizer: str | None = None


@dataclass(slots=True)
class Transition:
    to: str
    reason: str | None
    when: Compiled | None
    guard: str | None
    node: dict | None


@dataclass(slots=True)
class AgentSpec:
    """One agent compiled for execution (templates, extracts, transitions of its state)."""

    name: str
    kind: str
    model: str | None
    tool: str | None
    system: Template | None
    prompt: Template | None
    input: Template | None
    sim: Template | None
    history: bool
    params: dict
    extractor: Extractor
    fields: tuple[str, ...]
    is_sim: bool
    sim_tokens: tuple[int, int]
    replicas: int
    max_concurrency: int
    transitions: list[Transition]
    need: str = "all"


class LazyText(dict):
    """A history entry or an agent's latest values as the context presents them: `text` (the text of
    history entry `_entry`) is fetched on first read, so reading other keys needs no history text."""

    __slots__ = ("_texts", "_entry")

    def __missing__(self, key: str) -> Any:
        if key == "text" and self._entry is not None:
            text = self._texts.text(self._entry)
            dict.__setitem__(self, "text", text)
            return text
        raise KeyError(key)

    def plain(self) -> dict:
        """A plain dict with `text` resolved."""
        self["text"]  # noqa: B018 - resolves the lazy key
        return dict(self)


class Visits(dict):
    """`visits`: completed steps per agent, 0 for agents that have not run."""

    __slots__ = ()

    def __missing__(self, key: str) -> int:
        return 0


class _Texts:
    """The history texts of one message at one moment: `texts[i]` where the caller supplied it, else
    the entry's inline text. Kept apart from `_Scope` so that the `LazyText` views a scope caches do
    not point back at it: a cycle would leave every step's scope, and the message under it, to the
    cyclic garbage collector instead of reference counting."""

    __slots__ = ("msg", "texts")

    def __init__(self, msg: Message, texts: Sequence[str | None]) -> None:
        self.msg, self.texts = msg, texts

    def text(self, i: int) -> str:
        texts, n = self.texts, len(self.msg.history)
        if i < 0:
            i += n
        t = texts[i] if i < len(texts) else None
        if t is None:
            t = self.msg.history[i].get("text")
            if t is None:
                raise MissingText(f"row {self.msg.id!r}: text of history[{i}] "
                                  f"({self.msg.history[i].get('agent')}) is needed but was not supplied")
        return t


class _Scope:
    """Context names for one message at one moment, built on first use and cached."""

    __slots__ = ("eng", "msg", "texts", "cache")

    def __init__(self, eng: Engine, msg: Message, texts: Sequence[str | None]) -> None:
        self.eng, self.msg, self.texts, self.cache = eng, msg, _Texts(msg, texts), {}

    def text(self, i: int) -> str:
        return self.texts.text(i)

    def var(self, name: str) -> Any:
        try:
            return self.cache[name]
        except KeyError:
            pass
        msg = self.msg
        if name == "row":
            v: Any = msg.row
        elif name == "turns":
            v = msg.steps
        elif name == "visits":
            v = Visits(msg.visits)
        elif name == "history":
            v = [{"agent": e["agent"], "text": self.text(i)} for i, e in enumerate(msg.history)]
        elif name == "last":
            v = self._lazy({"agent": msg.history[-1]["agent"]}, len(msg.history) - 1) if msg.history else None
        elif name in self.eng.agents:
            v = self._agent(name)
        else:
            raise ExprError(f"unknown name {name!r}")
        self.cache[name] = v
        return v

    def _lazy(self, d: dict, entry: int | None) -> LazyText:
        view = LazyText(d)
        view._texts, view._entry = self.texts, entry
        return view

    def _agent(self, name: str) -> LazyText:
        spec = self.eng.agents[name]
        vals = self.msg.values.get(name)
        if vals is None:
            return self._lazy(dict.fromkeys(spec.fields), None)
        d = {k: vals.get(k) for k in spec.extractor.names}
        d["exit_code"] = vals.get("exit_code")
        entry = vals.get("entry")
        if entry is None:
            d["text"] = None
        return self._lazy(d, entry)

    def context(self, tmpl: Template) -> dict[str, Any]:
        known = self.eng.names
        return {n: self.var(n) for n in tmpl.names if n in known}


def _plain(v: Any) -> Any:
    if isinstance(v, LazyText):
        return v.plain()
    if isinstance(v, Visits):
        return dict(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class Engine:
    """The compiled workflow. Cheap per step: templates, regexes and guards are compiled here once."""

    def __init__(self, ir: dict | str, *, seed: int = 0, backend: str | None = None) -> None:
        if backend not in (None, "sim"):
            raise ValueError(f"backend must be None or 'sim', got {backend!r}")
        ir, models, tools = load_ir_specs(ir)
        self.ir: dict = ir
        self.models: dict[str, ModelSpec] = models
        self.tools: dict[str, ToolSpec] = tools
        self.seed, self.backend = seed, backend
        self.workflow_name: str = ir["workflow"]["name"]
        self.workflow_hash: str = ir["workflow"]["source_hash"]
        self.limits: dict = ir["limits"]
        self.max_steps: int = ir["limits"]["max_steps"]
        self.row_timeout_s: float = ir["limits"]["row_timeout_s"]
        self.names = frozenset(CONTEXT_NAMES) | frozenset(ir["agents"])
        self._rows = RowValidator(ir["input_schema"])
        self.agents: dict[str, AgentSpec] = {n: self._compile_agent(n, a) for n, a in ir["agents"].items()}
        self.start: list[Transition] = self._compile_transitions("start")
        for spec in self.agents.values():
            spec.transitions = self._compile_transitions(spec.name)
            spec.need = self._history_need(spec)
        self.outputs: list[tuple[str, Compiled, dict]] = [
            (f["name"], compile_expr(f["expr"], self.names), f["expr"]) for f in ir["output"]["fields"]
        ]

    # ---- compilation -------------------------------------------------------------------------

    def model_backend(self, model: str) -> str:
        """The backend a model really uses: "sim" when forced, else the IR's."""
        return "sim" if self.backend == "sim" else self.models[model].backend

    def _compile_agent(self, name: str, a: dict) -> AgentSpec:
        def tmpl(key: str) -> Template | None:
            return compile_template(a.get(key), f"agent {name} {key} template")

        extractor = Extractor(a.get("extracts", []), name)
        fields = ("text", *extractor.names, "exit_code")
        params: dict = {}
        is_sim, lo_hi = False, (0, 0)
        if a["kind"] == "llm":
            model = self.models[a["model"]]
            params = {**model.params, **a.get("params", {})}
            is_sim = self.model_backend(a["model"]) == "sim"
            lo, hi = model.sim.tokens
            cap = params.get("max_tokens")
            if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
                lo, hi = min(lo, cap), min(hi, cap)
            lo_hi = (lo, hi)
        return AgentSpec(
            name=name, kind=a["kind"], model=a.get("model"), tool=a.get("tool"),
            system=tmpl("system"), prompt=tmpl("prompt"), input=tmpl("input"), sim=tmpl("sim"),
            history=bool(a.get("history", AGENT_DEFAULTS["history"])), params=params, extractor=extractor, fields=fields,
            is_sim=is_sim, sim_tokens=lo_hi, replicas=a.get("replicas", AGENT_DEFAULTS["replicas"]),
            max_concurrency=a.get("max_concurrency", AGENT_DEFAULTS["max_concurrency"]), transitions=[],
        )

    def _compile_transitions(self, state: str) -> list[Transition]:
        out = []
        for tr in self.ir["states"][state]["transitions"]:
            node = tr.get("when")
            when = None if node is None else compile_expr(node, self.names)
            out.append(Transition(tr["to"], tr.get("reason"), when, tr.get("guard"), node))
        return out

    def _history_need(self, spec: AgentSpec) -> str:
        level = 2 if spec.kind == "llm" and spec.history else 0
        templates = [spec.system, spec.prompt, spec.input] + ([spec.sim] if spec.is_sim else [])
        for t in templates:
            if t is not None:
                for name, attr in t.reads:
                    level = max(level, _read_level(name, attr, spec.name, self.agents, before_step=True))
        for tr in spec.transitions:
            if tr.node is not None:
                for name, attr in reads(tr.node):
                    level = max(level, _read_level(name, attr, spec.name, self.agents, before_step=False))
        return NEEDS[level]

    # ---- public API ----------------------------------------------------------------------------

    def history_need(self, state: str) -> str:
        """"all" | "last" | "none": the history texts prepare_call + apply_reply of this agent state read."""
        try:
            return self.agents[state].need
        except KeyError:
            raise ValueError(f"{state!r} is not an agent state of workflow {self.workflow_name!r}") from None

    def output_need(self) -> str:
        """"all" | "last" | "none": the history texts output_row reads."""
        level = 0
        for _, _, node in self.outputs:
            for name, attr in reads(node):
                level = max(level, _read_level(name, attr, None, self.agents, before_step=True))
        return NEEDS[level]

    def new_message(self, raw: str | bytes | dict, position: int, now: float,
                    trial: int | None = None) -> Message:
        """Admit one input row (one trial of it when ``trial`` is set: id ``ID#k``): parse, validate,
        then take the `start` transitions.

        A bad row is finished at once (failed, bad_input); its `row` keeps the valid fields and has the
        invalid ones set to null, and its id is the position when the id field itself is invalid."""
        msg = Message(id=position, row={}, state="start", position=position, trial=trial,
                      timing={"admitted": now, "finished": None})
        try:
            msg.row = self._rows.parse(raw)
            self._rows.validate(msg.row)      # on failure: invalid fields set to null, then raises
        except BadRow as e:
            if e.row is not None:
                msg.row = e.row
            self._set_id(msg, position)
            self._finish(msg, FAILED, "bad_input", str(e), now)
            return msg
        self._set_id(msg, position)
        self._advance(msg, "start", self.start, (), now)
        return msg

    def own_id(self, raw: str | bytes | dict) -> str | int | None:
        """The id a row admitted by :meth:`new_message` takes from its id field (None: known by its
        position), without admitting it."""
        try:
            row = self._rows.parse(raw)
            self._rows.validate(row)
        except BadRow as e:
            row = e.row
        return self._rows.own_id(row)

    def _set_id(self, msg: Message, position: int) -> None:
        own = self._rows.own_id(msg.row)
        msg.id, msg.id_from = (position, ID_POSITION) if own is None else (own, ID_FIELD)
        msg.id = trial_id(msg.id, msg.trial)

    def duplicate(self, msg: Message, first: int, now: float) -> None:
        """Finish a new message whose own id repeats the row's at input position ``first``: failed,
        reason ``duplicate_id``; it keeps its id and is keyed by its position."""
        msg.id_from = ID_DUPLICATE
        self._finish(msg, FAILED, "duplicate_id",
                     f"id {msg.id!r} is also the id of the row at input position {first} (written there)", now)

    def prepare_call(self, msg: Message, texts: Sequence[str | None] = ()) -> LLMCall | ToolCall:
        """Render the current agent's templates and build its call. StepError(template_error) on failure."""
        spec = self._running_agent(msg)
        scope = _Scope(self, msg, texts)
        seed_key = f"{self.seed}:{msg.id}:{msg.steps}"
        if spec.kind == "tool":
            text = "" if spec.input is None else self._render(spec.input, scope, seed_key, "input")
            return ToolCall(spec.name, spec.tool, text)  # type: ignore[arg-type]
        messages: list[dict] = []
        if spec.system is not None:
            messages.append({"role": "system", "content": self._render(spec.system, scope, seed_key, "system")})
        if spec.history:
            name = spec.name
            exact = self.models[spec.model].backend == "vllm"  # type: ignore[index]
            for i, e in enumerate(msg.history):
                m = {"role": "assistant" if e["agent"] == name else "user", "content": scope.text(i)}
                if exact and "token_ids" in e:
                    m["token_ids"], m["tokenizer"] = e["token_ids"], e["tokenizer"]
                messages.append(m)
        if spec.prompt is not None:
            messages.append({"role": "user", "content": self._render(spec.prompt, scope, seed_key, "prompt")})
        sim_text, sim_tokens = None, 0
        if spec.is_sim:
            rng = LazyRandom(seed_key)
            sim_tokens = rng.get().randint(*spec.sim_tokens)
            if spec.sim is not None:
                sim_text = self._render(spec.sim, scope, None, "sim", rng)
        prompt_tokens = max(1, sum(len(m["content"]) for m in messages) // 4)
        return LLMCall(spec.name, spec.model, messages, dict(spec.params),  # type: ignore[arg-type]
                       sim_text, sim_tokens, prompt_tokens, seed_key)

    def apply_reply(self, msg: Message, reply: Reply, texts: Sequence[str | None] = (), now: float = 0.0) -> None:
        """Record the step (history, extracts, counters, usage) and move to the next state or finish."""
        spec = self._running_agent(msg)
        name = spec.name
        entry = len(msg.history)
        e = {"agent": name, "text": reply.text}
        if reply.token_ids is not None and spec.model and self.models[spec.model].backend == "vllm":
            e["token_ids"], e["tokenizer"] = reply.token_ids, reply.tokenizer
        msg.history.append(e)
        try:
            vals = spec.extractor.run(reply.text)
        except RegexTimeout as e:
            vals = dict.fromkeys(spec.extractor.names)
            self._record(msg, spec, reply, entry, vals)
            self._finish(msg, FAILED, "regex_timeout", f"{name} extract: {e}", now)
            return
        self._record(msg, spec, reply, entry, vals)
        self._advance(msg, name, spec.transitions, texts, now)

    @staticmethod
    def _record(msg: Message, spec: AgentSpec, reply: Reply, entry: int, vals: dict) -> None:
        """Count a done step: its values, visit, step and usage."""
        name = spec.name
        vals["entry"] = entry
        vals["exit_code"] = reply.exit_code
        msg.values[name] = vals
        msg.visits[name] = msg.visits.get(name, 0) + 1
        msg.steps += 1
        u = msg.usage.get(name)
        if u is None:
            u = msg.usage[name] = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0}
        u["prompt_tokens"] += reply.prompt_tokens
        u["completion_tokens"] += reply.completion_tokens
        u["calls"] += 1

    def fail(self, msg: Message, status: str, reason: str, detail: str, now: float) -> None:
        """Finish a message unsuccessfully (status "failed" or "error"), e.g. model_error after retries."""
        if status not in (FAILED, ERROR):
            raise ValueError(f"fail() status must be 'failed' or 'error', got {status!r}")
        self._finish(msg, status, reason, detail, now)

    def output_row(self, msg: Message, texts: Sequence[str | None] = ()) -> dict:
        """The output row: output fields in order (null when they cannot be evaluated), then `_meta`."""
        scope = _Scope(self, msg, texts)
        out: dict[str, Any] = {}
        for name, fn, _ in self.outputs:
            try:
                out[name] = _plain(fn(scope))
            except (ExprError, RegexTimeout):
                out[name] = None
        admitted, finished = msg.timing.get("admitted"), msg.timing.get("finished")
        out["_meta"] = {
            "id": msg.id, "position": msg.position, "id_from": msg.id_from, "status": msg.status, "reason": msg.reason, "detail": msg.detail,
            "steps": msg.steps, "attempt": msg.attempt,
            "usage": {k: dict(v) for k, v in msg.usage.items()},
            "timing": {"admitted": admitted, "finished": finished,
                       "elapsed_s": None if admitted is None or finished is None else finished - admitted},
            "workflow": {"name": self.workflow_name, "hash": self.workflow_hash},
        }
        if msg.trial is not None:
            out["_meta"]["trial"] = msg.trial
        return out

    # ---- internals -----------------------------------------------------------------------------

    def _running_agent(self, msg: Message) -> AgentSpec:
        if msg.status != RUNNING:
            raise ValueError(f"row {msg.id!r} is finished ({msg.status})")
        try:
            return self.agents[msg.state]
        except KeyError:
            raise ValueError(f"row {msg.id!r} is in state {msg.state!r}, not an agent state") from None

    def _render(self, tmpl: Template, scope: _Scope, seed_key: str | None, role: str,
                rng: LazyRandom | None = None) -> str:
        if rng is None:
            rng = LazyRandom(f"{seed_key}:{role}")
        try:
            return tmpl.render(scope.context(tmpl), rng)
        except RenderError as e:
            raise StepError("template_error", str(e)) from None
        except ExprError as e:  # an unknown name reached through the scope
            raise StepError("template_error", f"{tmpl.label}: {e}") from None

    def _advance(self, msg: Message, state: str, transitions: list[Transition],
                 texts: Sequence[str | None], now: float) -> None:
        scope = _Scope(self, msg, texts)
        for tr in transitions:
            if tr.when is not None:
                try:
                    held = bool(tr.when(scope))
                except RegexTimeout as e:
                    self._finish(msg, FAILED, "regex_timeout", f"{state} -> {_target(tr)} when {tr.guard}: {e}", now)
                    return
                except ExprError as e:
                    self._finish(msg, FAILED, "guard_error", f"{state} -> {_target(tr)} when {tr.guard}: {e}", now)
                    return
                if not held:
                    continue
            if tr.to == "end":
                self._finish(msg, OK, None, None, now)
            elif tr.to == "fail":
                where = f" when {tr.guard}" if tr.guard else ""
                self._finish(msg, FAILED, tr.reason or "fail", f"{state} -> fail{where}", now)
            elif msg.steps >= self.max_steps:
                self._finish(msg, FAILED, "max_steps",
                             f"{msg.steps} steps done (limits.max_steps = {self.max_steps}); next was {tr.to}", now)
            elif (admitted := msg.timing.get("admitted")) is not None and now - admitted > self.row_timeout_s:
                self._finish(msg, FAILED, "row_timeout",
                             f"row running for {now - admitted:.1f}s > limits.row_timeout_s = "
                             f"{self.row_timeout_s:g}; next was {tr.to}", now)
            else:
                msg.state = tr.to
            return
        guards = "; ".join(str(tr.guard) for tr in transitions) or "no transitions"
        self._finish(msg, FAILED, "no_transition", f"no transition from {state} holds ({guards})", now)

    @staticmethod
    def _finish(msg: Message, status: str, reason: str | None, detail: str | None, now: float) -> None:
        msg.status, msg.reason, msg.detail = status, reason, detail
        msg.state = "end" if status == OK else "fail"
        msg.timing["finished"] = now


def _target(tr: Transition) -> str:
    return f'fail "{tr.reason}"' if tr.to == "fail" else tr.to


def _read_level(name: str, attr: str | None, agent: str | None, agents: Collection[str], *,
                before_step: bool) -> int:
    """0/1/2 = none/last/all: history texts needed by reading `name.attr` (attr None: the whole value).
    After the step (guards), `last` and the agent's own text are the new reply, which is inline."""
    if name == "history":
        return 2
    if name == "last":
        return 1 if before_step and attr in (None, "text") else 0
    if name not in agents or attr not in (None, "text"):
        return 0
    return 0 if (not before_step and name == agent) else 2
