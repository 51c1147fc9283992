"""Issue 11: the promises a hostile input, reply or environment must not break. Each test names its break.

Every admitted row ends in the output exactly once, the summary tells the truth, no input produces a
traceback, and API keys never leave where they belong.
"""

from __future__ import annotations

import asyncio
import json
import os

import ir_fixtures as F
import pytest
from matrixlang.runtime.cluster import Topology
from matrixlang.runtime.driver import Driver, DriverConfig
from matrixlang.runtime.engine import Engine

from matrixlang.cli import main

# ---- break 7: the driver's hold leak -------------------------------------------------------------


class _Method:
    """A fake actor method: ``remote()`` gives an awaitable; the first ``fail`` calls fail (actor death)."""

    def __init__(self, fail: int = 0, answer=0):
        self.fail, self.answer, self.calls = fail, answer, 0

    def remote(self, *args):
        self.calls += 1
        fut = asyncio.get_running_loop().create_future()
        if self.calls <= self.fail:
            fut.set_exception(RuntimeError("the actor died"))
        else:
            fut.set_result(self.answer() if callable(self.answer) else self.answer)
        return fut


class _Actor:
    def __init__(self, fail: int = 0, held=()):
        self.deliver = _Method(fail)
        self.held_ids = _Method(answer=lambda: list(held))


def test_break7_a_resent_row_holds_once_and_is_readmitted_when_lost(tmp_path):
    """`_on_error` resent through `_send`, which counted a second hold without releasing the first: the
    driver then held the row forever, and a row later lost with an actor was never a candidate."""
    topo = Topology("t", None, {"a": 1})
    engine = Engine(F.loop())
    driver = Driver(engine, topo, str(tmp_path / "none.jsonl"), DriverConfig())
    agent = _Actor(fail=1)                         # the first delivery fails, the resend is acked
    driver.handles.put(topo.agent("a", 0), agent)

    async def main():
        msg = engine.new_message(b'{"n": 1}', 0, 0.0)
        driver.inflight[0] = msg
        driver._send(msg)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if agent.deliver.calls >= 2 and not driver.outbox.outstanding(("agent", topo.agent("a", 0))):
                break
        await driver.outbox.drain()
        held_after_ack = dict(driver.held)
        # the agent that took the row dies holding it: no live actor holds it any more
        return held_after_ack, await driver._candidates()

    held, candidates = asyncio.run(main())
    assert agent.deliver.calls == 2
    assert held == {}, "the driver still holds a row every actor has acknowledged"
    assert candidates == {0}, "a row no one holds must be a candidate for re-admission"


# ---- break 5: the output is the input ------------------------------------------------------------


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_break5_output_that_is_the_input_is_refused_and_the_input_kept(capsys, tmp_path, how, flag):
    """`-o` naming the input file (by its path, a symbolic link or a hard link) with --overwrite emptied
    the input and exited 0 with 0 rows; with --resume the run appended to the file it was reading."""
    ir = tmp_path / "loop.json"
    ir.write_text(json.dumps(F.loop()))
    inp = tmp_path / "in.jsonl"
    text = "".join(json.dumps({"n": i}) + "\n" for i in range(3))
    inp.write_text(text)
    out = {"same": inp, "symlink": tmp_path / "link.jsonl", "hardlink": tmp_path / "hard.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(inp)
    elif how == "hardlink":
        os.link(inp, out)
    code = main(["run", str(ir), "-i", str(inp), "-o", str(out), "--backend", "sim", flag])
    err = capsys.readouterr().err
    assert code == 2 and "is the input file" in err
    assert inp.read_text() == text
