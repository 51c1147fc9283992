"""The actors' protocol: the one-way methods an :class:`~.outbox.Outbox` calls on an actor, and the
kinds of destination its lanes are keyed by (``(kind,)`` or ``(kind, actor name)``).

Every method takes a batch (packed by :func:`~.outbox.pack`) and returns the receiver's load.
"""

from __future__ import annotations

# ---- methods ---------------------------------------------------------------------------------------
DELIVER = "deliver"   # messages and output lines: agents, the coordinator, the sink
SUBMIT = "submit"     # model requests: the sim service
REPLIES = "replies"   # the sim service's replies: an agent
FETCH = "fetch"       # offloaded texts asked of the sink
FETCHED = "fetched"   # the sink's answers: an agent
OFFLOAD = "offload"   # large texts put in the sink's store

# ---- destination kinds ------------------------------------------------------------------------------
TO_AGENT = "agent"        # a replica of an agent role (running messages)
TO_OUTPUT = "out"         # the sink, or the coordinator in central mode (finished rows' output lines)
TO_COORDINATOR = "coord"  # the coordinator (admitted rows, central mode)
TO_SIM = "sim"            # a sim service (model requests)
TO_FETCH = "fetch"        # the sink's store (fetches of offloaded texts)
TO_OFFLOAD = "offload"    # the sink's store (offloads)
REQUESTS = (TO_SIM, TO_FETCH)
"""Kinds whose items are requests awaiting an answer: a failed send fails the request, not a row."""
