#!/usr/bin/env python
"""Create a tiny random-weight Llama-architecture model and its tokenizer in a directory, offline.

    python scripts/make_tiny_model.py DIR [--layers 2 --hidden 128 --heads 2 --vocab 512 --seed 0]

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in text, the weights are
random (``LlamaForCausalLM`` from a tiny ``LlamaConfig``). The directory loads with
``transformers.AutoModelForCausalLM``/``AutoTokenizer`` and with vLLM (``vllm serve DIR`` or a
``backend = "vllm"`` model whose ``name`` is DIR). Its replies are gibberish: it exists to test the
serving path (engine start, scheduling, token accounting, routing, failures), not the text.
The tokenizer has a chat template (``<|role|>`` headers, ``</s>`` ends a turn).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = ("the model agent answer question reason step teacher student score text value code test "
         "python function return list string number true false null workflow row output input "
         "choice agree because first then finally think option letter sandbox tool call reply")
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]


def corpus() -> list[str]:
    """A small training text: varied English and code-like lines (deterministic)."""
    words = WORDS.split()
    lines = []
    for i in range(400):
        w = [words[(i * 7 + k * 13) % len(words)] for k in range(12)]
        lines.append(" ".join(w) + f". Answer: {'ABCD'[i % 4]} ({i})")
        lines.append(f"def f{i}(x):\n    return x * {i % 9} + {i % 5}  # {w[0]} {w[1]}")
    return lines


def make_tokenizer(out: Path, vocab: int):
    """Train a byte-level BPE tokenizer and save it (with a chat template) as a fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=SPECIAL[4:])
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def make_model(out: Path, tok, *, layers: int, hidden: int, heads: int, seed: int) -> dict:
    """A random-weight LlamaForCausalLM sized to the tokenizer; returns its config as a dict."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(out, safe_serialization=True)
    return cfg.to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to create (files in it are replaced)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128, help="hidden size (head size = hidden / heads)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.hidden % a.heads:
        ap.error("--hidden must be a multiple of --heads")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out, a.vocab)
    cfg = make_model(out, tok, layers=a.layers, hidden=a.hidden, heads=a.heads, seed=a.seed)
    print(json.dumps({"dir": str(out.resolve()), "vocab_size": cfg["vocab_size"],
                      "hidden_size": cfg["hidden_size"], "layers": cfg["num_hidden_layers"],
                      "weights_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors"))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
