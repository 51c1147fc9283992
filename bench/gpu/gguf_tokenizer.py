"""Write the tokenizer files of a GGUF's byte-level BPE vocabulary (SmolLM2's is `gpt2`-style) as a
Hugging Face tokenizer directory, with no torch: `gguf` reads the metadata, `tokenizers` builds it.
The Llama-8B-shaped dummy model of the GPU benchmark needs only a tokenizer (its weights are random),
so this spares carrying the 86 MiB GGUF to the GPU machine for that model.

    python bench/gpu/gguf_tokenizer.py SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CONTROL = 3  # llama.cpp's token type of special (control) tokens


def field(reader, key: str):
    f = reader.fields[key]
    return f.contents()


def main(argv: list[str]) -> int:
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    src, out = Path(argv[0]), Path(argv[1])
    r = GGUFReader(str(src))
    if field(r, "tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"{src}: not a byte-level BPE (gpt2) vocabulary")
    tokens: list[str] = field(r, "tokenizer.ggml.tokens")
    types: list[int] = field(r, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types, strict=True) if ty == CONTROL])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    ids = {k: int(field(r, f"tokenizer.ggml.{k}_token_id")) for k in ("bos", "eos", "unknown", "padding")}
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192, "clean_up_tokenization_spaces": False,
        "bos_token": tokens[ids["bos"]], "eos_token": tokens[ids["eos"]], "unk_token": tokens[ids["unknown"]],
        "pad_token": tokens[ids["padding"]], "add_bos_token": False,
        "chat_template": field(r, "tokenizer.chat_template"),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=1) + "\n")
    print(f"{out}: {len(tokens)} tokens, {len(merges)} merges, "
          f"{sum(1 for t in types if t == CONTROL)} special")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
