"""The language's names and defaults: one table, read by the runtime and by the checker.

The runtime owns it (the checker's resolver takes its builtins from the evaluator's own tables, as
starlark-go's `resolve.go` does), and it imports nothing: `import matrixlang.checker` reads it without
pulling in Ray, and the runtime never imports the front end. The other two tables live beside their
implementations and are read from there by the checker too:
- functions, with arity and argument types: `expr.FUNCTIONS` (runtime/semantics/expr.py);
- template filters and tests: `templates.FILTERS`, `templates.TESTS` (runtime/semantics/templates.py), the
  runtime's own jinja2 environment, built from `TEMPLATE_SETTINGS` and `TEMPLATE_GLOBALS` below.

Documented in docs/language.md (expressions, templates, limits) and docs/ir.md (defaults).
"""

from __future__ import annotations

# ---- names guards, output fields and templates can read -----------------------------------------

CONTEXT_NAMES = ("row", "history", "last", "turns", "visits")
"""Context names of guards, output expressions and templates (besides every agent's name)."""

RESERVED_NAMES = frozenset(CONTEXT_NAMES)
"""Names an agent cannot take."""

FINAL_STATES = ("end", "fail")
START_STATE = "start"

ENTRY_FIELDS = ("agent", "text")
"""Fields of a history entry (`history[i]`, `last`)."""

AGENT_FIELDS = ("text", "exit_code")
"""Built-in fields of every agent's value (`exit_code` is set by tool agents only)."""

RESERVED_FIELDS = (*AGENT_FIELDS, "entry")
"""Names an extract cannot take: the built-in fields and the message's `values[AGENT]["entry"]`."""

META_FIELD = "_meta"
RESERVED_OUTPUT_FIELDS = (META_FIELD,)
"""Output field names the runtime writes itself."""

# Kinds of values, as the checker's types name them (`obj`: a JSON object).
KINDS = ("str", "int", "float", "bool", "list", "obj")

# ---- templates -------------------------------------------------------------------------------------

TEMPLATE_SETTINGS: dict = {
    "autoescape": False,            # prompts are text, not HTML
    "keep_trailing_newline": True,  # whitespace is kept as written (docs/language.md "Templates")
    "trim_blocks": False,
    "lstrip_blocks": False,
}
"""Settings of the jinja2 environment templates are both checked and rendered with."""

TEMPLATE_GLOBALS = ("range", "dict", "cycler", "joiner", "namespace")
"""jinja2 globals a template may use."""

TEMPLATE_LOCALS = ("loop", "caller", "varargs", "kwargs")
"""Names jinja2 defines inside `for` loops and macros (undefined, so empty, elsewhere)."""

TEMPLATE_REMOVED = {
    "lipsum": "`lipsum` is not available: its text comes from an unseeded generator, so runs would not "
              "be reproducible; write the text, or draw from a list with the seeded `random` filter",
}
"""jinja2 globals that templates cannot use, with the reason the checker gives."""

# ---- defaults --------------------------------------------------------------------------------------

MAX_STEPS = 40
ROW_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 120.0
RETRIES = 3
OUTAGE_WAIT_S = 300.0       # a call waits out an outage of every endpoint of its model this long
THROTTLE_WAIT_S = 300.0     # a call's 429/503 answers use none of its attempts this long (while others succeed)
THROTTLE_PROGRESS_S = 60.0  # ... provided the model answered some call this recently
ROW_ATTEMPTS = 3
TRIALS = 1                  # runs of each input row (`limits { trials }`, `mxc run --trials`)
UNTIL_OK = None             # no target: every row runs (`limits { until_ok }`, `mxc run --until-ok`)
LIMIT_DEFAULTS = {"max_steps": MAX_STEPS, "row_timeout_s": ROW_TIMEOUT_S, "call_timeout_s": CALL_TIMEOUT_S,
                  "retries": RETRIES, "row_attempts": ROW_ATTEMPTS, "trials": TRIALS, "until_ok": UNTIL_OK}
"""The IR's `limits` when the program sets none (IR 1.2 added `trials` and `until_ok`)."""

MODEL_DEFAULTS = {"api": "chat", "replicas": 1, "max_concurrency": 256, "tensor_parallel": 1,
                  "pipeline_parallel": 1}
AUTOSCALE_DEFAULTS = {"min_replicas": 1, "target_ongoing_requests": 32}
AGENT_DEFAULTS = {"history": True, "replicas": 1, "max_concurrency": 1024}
TOOL_DEFAULTS = {"timeout_s": 10.0, "memory_bytes": 256 * 2**20, "network": False,
                 "max_output_bytes": 64 * 2**10, "replicas": 1, "max_concurrency": 4}
"""A tool's defaults; its `cpu_s` defaults to its `timeout_s`."""
SIM_DEFAULTS = {"tokens": [16, 64], "ttft_s": 0.01, "per_token_s": 0.0005, "max_concurrency": 64,
                "replicas": 1}

MAX_IN_FLIGHT = 256
"""Rows in the system at once (`mxc run --max-in-flight`)."""
OFFLOAD_THRESHOLD = 65536
"""History texts larger than this many bytes go to Ray's object store when a row moves between actors
(`mxc run --offload-threshold`; measured by bench/offload_crossover.py)."""

ADAPTIVE_CONCURRENCY = True
"""Calls in flight per endpoint adapt to the server's 429/503, timeouts and latency (AIMD, runtime/backends/aimd.py;
`mxc run --adaptive-concurrency on|off`); off: as many calls as rows in flight."""
AIMD_DEFAULTS = {"min_limit": 1, "decrease": 0.75, "latency_factor": 2.0, "latency_samples": 50, "increase_after": 8}
"""AIMD of one endpoint: the limit is cut to `decrease` x calls in flight (not below `min_limit`) on an
overload, or when the recent latency exceeds `latency_factor` x its long-term average (after
`latency_samples` calls); it grows by one per limit's worth of successes (at least `increase_after`),
up to --max-in-flight."""
