"""Token-exact histories on the Serve (``vllm``) path (docs/vllm.md): the replies' token ids ride in the
history entries, go back to the replica with the messages, are spliced into the prompt there, and never
reach an OpenAI server or the output rows.

Without vLLM: the engine's bookkeeping, the packing, and a whole run through a Serve application whose
replica speaks ``VLLMServer``'s protocol (no engine behind it). With ``transformers`` and the SmolLM2
tokenizer (``~/.cache/matrixlang/smollm2-135m-instruct``): the splice itself on a real chat template.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from matrixlang.runtime.backends.vllm_serve import pack_ids, splice_prompt_ids, unpack_ids
from matrixlang.runtime.semantics.engine import Engine, Reply
from matrixlang.runtime.semantics.message import without_runtime_keys

from matrixlang.checker import check
from matrixlang.compiler import build_ir
from matrixlang.source import Source

SMOLLM2 = Path.home() / ".cache" / "matrixlang" / "smollm2-135m-instruct"

PROGRAM = '''
workflow exact_ids "two agents on a vllm model, a third on an openai one"
input { id: str  q: str }
limits { max_steps = 8 }
model big { backend = "vllm"  name = "fake/model"  max_tokens = 8  timeout = 30s  retries = 1 }
model small { backend = "openai"  name = "m"  url = env("SMALL_URL", "http://127.0.0.1:9/v1")  max_tokens = 4 }
agent writer { model = big  system = "Write about {{ row.q }}."  prompt = "{{ last.text if last else 'Begin.' }}" }
agent critic { model = big  system = "Criticise." }
agent judge { model = small  system = "Judge." }
flow {
  start -> writer
  writer -> critic
  critic -> judge when visits.critic >= 2
  critic -> writer
  judge -> end
}
output { id = row.id  transcript = history  last = last  critic = critic }
'''


def compile_ir(text: str = PROGRAM) -> dict:
    an = check(Source("exact.mx", text))
    assert not an.diags.has_errors, [d.message for d in an.diags.sorted()]
    return build_ir(an)


def test_pack_and_plain_messages():
    ids = [0, 1, 49151, 2**31 - 1, 7]
    assert unpack_ids(pack_ids(ids)) == ids and len(pack_ids(ids)) == 4 * len(ids)
    msgs = [{"role": "user", "content": "a", "token_ids": pack_ids([1]), "tokenizer": "t"},
            {"role": "user", "content": "b"}]
    want = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert without_runtime_keys(msgs) == want
    assert without_runtime_keys(want) is want   # nothing to strip: no copy


def test_history_entries_keep_vllm_ids_and_output_rows_do_not():
    """A vllm model's reply ids go into its history entry and back to the same backend's calls; the
    openai agent's call and the output row never see them; a reply without ids keeps the entry plain."""
    eng = Engine(compile_ir(), seed=0)
    msg = eng.new_message({"id": "r", "q": "owls"}, 0, 0.0)
    calls = []
    for step in range(4):        # writer, critic, writer, critic: ids on every reply but the third
        call = eng.prepare_call(msg)
        calls.append(call)
        ids = None if step == 2 else pack_ids([step, step + 100])
        eng.apply_reply(msg, Reply(f"text {step}", 5, 2, token_ids=ids, tokenizer="fake/model"), (), 1.0)
    assert [e.get("token_ids") for e in msg.history] == [pack_ids([0, 100]), pack_ids([1, 101]), None,
                                                         pack_ids([3, 103])]
    assert {e.get("tokenizer") for e in msg.history} == {"fake/model", None}
    # the critic's second call: writer, critic, writer entries as messages; ids on those that have them
    hist = [m for m in calls[3].messages if m["role"] != "system"]
    assert [m["content"] for m in hist] == ["text 0", "text 1", "text 2"]
    assert [m.get("token_ids") for m in hist] == [pack_ids([0, 100]), pack_ids([1, 101]), None]
    assert hist[1]["role"] == "assistant" and hist[0]["tokenizer"] == "fake/model"
    judge = eng.prepare_call(msg)                  # openai backend: plain messages only
    assert judge.model == "small" and all(set(m) == {"role", "content"} for m in judge.messages)
    eng.apply_reply(msg, Reply("verdict", 3, 1, token_ids=pack_ids([9]), tokenizer="x"), (), 2.0)
    assert "token_ids" not in msg.history[-1]     # an openai reply never keeps ids
    assert msg.status == "ok"
    row = eng.output_row(msg)
    text = json.dumps(row, default=repr)
    assert "token_ids" not in text and "tokenizer" not in text
    assert row["transcript"][0] == {"agent": "writer", "text": "text 0"} and row["last"]["text"] == "verdict"
    d = msg.to_dict()                             # the message schema's view: no runtime keys
    assert [set(e) for e in d["history"]] == [{"agent", "text"}] * 5
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(eng.ir["message_schema"]).validate(d)



def test_openai_request_bodies_never_carry_token_ids():
    """Messages with packed ids (bytes, which JSON cannot even encode) go to an OpenAI server as
    ``{role, content}``: the sim server answers and saw no ``token_ids``."""
    from matrixlang.runtime.backends.openai_client import OpenAIClient, OpenAIModel, close_shared_session
    from matrixlang.runtime.backends.simserver import SimServerProcess

    msgs = [{"role": "system", "content": "S"},
            {"role": "assistant", "content": "x", "token_ids": pack_ids([5, 6]), "tokenizer": "t"},
            {"role": "user", "content": "go"}]
    with SimServerProcess() as srv:
        async def go() -> Reply:
            client = OpenAIClient(OpenAIModel(model="llm", name="m", urls=[srv.url], params={"max_tokens": 3}))
            try:
                return await client.chat(msgs, params={"max_tokens": 3})
            finally:
                await close_shared_session()
        r = asyncio.run(go())
    assert r.text and r.completion_tokens >= 1
    assert "token_ids" in msgs[1]                 # the caller's messages are left as they were


# ---- a whole run through Serve handles -----------------------------------------------------------------

def fake_replica() -> type:
    """The replica class, made here so that Ray pickles it by value (replicas cannot import tests/)."""

    class FakeReplica:
        """A Serve replica with ``VLLMServer``'s protocol and no engine: reply n is ``reply-n`` with ids
        [n, n+1000]; it records which messages of each request carried ids."""

        def __init__(self) -> None:
            self.n = 0
            self.seen: list[list[tuple[str, str, list[int] | None, str | None]]] = []

        async def chat(self, request: dict) -> dict:
            self.seen.append([(m["role"], m["content"],
                               unpack_ids(m["token_ids"]) if m.get("token_ids") is not None else None,
                               m.get("tokenizer")) for m in request["messages"]])
            n, self.n = self.n, self.n + 1
            return {"text": f"reply-{n}", "prompt_tokens": 10, "completion_tokens": 2, "finish_reason": "length",
                    "replica": "fake", "token_ids": pack_ids([n, n + 1000]), "tokenizer": "fake/model"}

        async def check_health(self) -> None:
            return None

        def requests(self) -> list:
            return self.seen

    return FakeReplica


@pytest.mark.ray
def test_serve_run_passes_reply_ids_back_and_writes_plain_rows(ray_local, tmp_path, monkeypatch):
    from matrixlang.runtime.backends import serve_deploy as sd
    from matrixlang.runtime.backends.simserver import SimServerProcess
    from matrixlang.runtime.control.run import RunOptions, run
    from ray import serve

    ir = compile_ir()
    sd.start_serve()
    app = serve.deployment(fake_replica()).options(name=sd.DEPLOYMENT, num_replicas=1,
                                                ray_actor_options={"num_cpus": 0}).bind()
    handle = serve.run(app, name=sd.app_name(ir, "big"), route_prefix=None)
    try:
        inp = tmp_path / "in.jsonl"
        inp.write_text("".join(json.dumps({"id": f"r{i}", "q": f"topic {i}"}) + "\n" for i in range(3)))
        out = tmp_path / "out.jsonl"
        with SimServerProcess() as srv:
            monkeypatch.setenv("SMALL_URL", srv.url)
            summary = run(ir, RunOptions(input=str(inp), output=str(out), progress="off", print_summary=False))
        seen = handle.requests.remote().result(timeout_s=30)
    finally:
        serve.delete(sd.app_name(ir, "big"), _blocking=True)
    assert summary["by_status"] == {"ok": 3}
    assert len(seen) == 12                          # 3 rows x (writer, critic, writer, critic)
    replies = {f"reply-{n}": [n, n + 1000] for n in range(12)}
    with_ids = 0
    for req in seen:
        writer = req[0][1].startswith("Write about")
        hist = req[1:-1] if writer else req[1:]           # the writer's last message is its prompt
        for role, content, ids, tok in hist:               # earlier replies: their own ids came back
            assert ids == replies[content] and tok == "fake/model", (role, content, ids)
            with_ids += 1
        for _, _, ids, tok in [req[0], *req[len(hist) + 1:]]:   # system and prompt: text only
            assert ids is None and tok is None
    assert with_ids == 3 * (1 + 2 + 3)              # critic 1: 1 earlier reply, writer 2: 2, critic 2: 3
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for r in rows:
        assert [set(e) for e in r["transcript"]] == [{"agent", "text"}] * 5
        assert "token_ids" not in json.dumps(r) and "tokenizer" not in json.dumps(r)


# ---- the splice on a real tokenizer -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    transformers = pytest.importorskip("transformers")
    if not (SMOLLM2 / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 tokenizer at {SMOLLM2}")
    return transformers.AutoTokenizer.from_pretrained(str(SMOLLM2))


def test_splice_extends_the_previous_prompt_exactly(tokenizer):
    """Call k+1's ids = call k's prompt ids + its generated ids + the rest, even for generated ids that
    do not survive a round trip through text (here: special tokens in the middle of a reply)."""
    from matrixlang.runtime.backends.vllm_serve import render_prompt

    def encode(msgs: list[dict]) -> list[int]:
        return tokenizer.encode(render_prompt(tokenizer, without_runtime_keys(msgs)), add_special_tokens=False)

    first = [{"role": "system", "content": "You are A."}, {"role": "user", "content": "Question?"}]
    p1 = encode(first)
    gen = tokenizer.encode(" Hmm<|im_end|>  odd\u00a0 ", add_special_tokens=False)
    text = tokenizer.decode(gen, skip_special_tokens=True)
    second = [*first, {"role": "assistant", "content": text, "token_ids": pack_ids(gen), "tokenizer": "T"},
              {"role": "user", "content": "More."}]
    p2 = splice_prompt_ids(tokenizer, second, "T")
    assert p2 is not None and p2[:len(p1) + len(gen)] == p1 + gen
    assert encode(second)[:len(p1) + len(gen)] != p1 + gen       # the text path does not
    tail = tokenizer.decode(p2[len(p1) + len(gen):])
    assert tail == "<|im_end|>\n<|im_start|>user\nMore.<|im_end|>\n<|im_start|>assistant\n"
    # call k+2 extends call k+1 (earlier spliced messages splice the same way again)
    gen2 = tokenizer.encode(" again", add_special_tokens=False)
    third = [*second, {"role": "assistant", "content": " again", "token_ids": pack_ids(gen2), "tokenizer": "T"},
             {"role": "user", "content": "Last."}]
    p3 = splice_prompt_ids(tokenizer, third, "T")
    assert p3[:len(p2) + len(gen2)] == p2 + gen2
    # without usable ids (another tokenizer's, or none) there is nothing to splice: the text path
    assert splice_prompt_ids(tokenizer, second, "other") is None
    assert splice_prompt_ids(tokenizer, first, "T") is None
    # a message without ids among spliced ones is rendered as text, in place
    mixed = [*first, {"role": "user", "content": "plain words"}, *third[2:]]
    pm = splice_prompt_ids(tokenizer, mixed, "T")
    assert pm is not None and gen + tokenizer.encode("<|im_end|>", add_special_tokens=False) in [
        pm[i:i + len(gen) + 1] for i in range(len(pm))]
    assert "plain words<|im_end|>" in tokenizer.decode(pm)


def test_splice_falls_back_when_the_template_repeats_or_drops_content(tokenizer):
    msgs = [{"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A", "token_ids": pack_ids([42]), "tokenizer": "T"}]
    template = tokenizer.chat_template
    try:
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}{% endfor %}"
        assert splice_prompt_ids(tokenizer, msgs, "T") is None                    # twice
        tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
        assert splice_prompt_ids(tokenizer, msgs, "T") is None                    # never
        tokenizer.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
        assert splice_prompt_ids(tokenizer, msgs, "T") is None                    # changed
    finally:
        tokenizer.chat_template = template
