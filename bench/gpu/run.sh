#!/bin/bash
# The GPU benchmark's one command on the H200 machine (docs/gpu.md). Every device call runs it from the
# folder it carried (.gpu/cK/, made by bench/gpu/pack.py) or, once everything is there, from
# /tmp/mxgpu/bench/gpu/:
#   bash .gpu/cK/run.sh prep          keep this call's payload part in /tmp/parts; install what is complete
#   bash .gpu/cK/run.sh smol [ARGS]   the same, then the benchmark with SmolLM2-135M-Instruct (real weights)
#   bash /tmp/mxgpu/bench/gpu/run.sh llama8b [ARGS]   ... with the Llama-3.1-8B shape, random weights
# ARGS go to bench/gpu/bench.py (--rows, --deadline, --phases, ...). Results and the log land in $OUT.
# Locally: PY=python3.12 MX_TMP=/tmp/mxgpu-test SIM=1 bash bench/gpu/run.sh smol ... (SIM: mxc sim-server
# instead of vLLM).
set -uo pipefail
C=$(cd "$(dirname "$0")" && pwd)
T=${MX_TMP:-/tmp}
OUT=${OUT:-$T/out}
PY=${PY:-python3}
mkdir -p "$OUT" "$T/parts" "$T/payload" "$T/models" "$T/mxbench"
exec > >(tee -a "$OUT/log") 2>&1
stage=${1:-prep}; shift || true
t0=$SECONDS
echo "== run.sh $stage $(date -u +%FT%TZ) on $(hostname); from $C"

# 1. this call's part, the manifest, the scripts, the matrixlang wheel
for f in "$C"/payload.part*; do [ -f "$f" ] && cp "$f" "$T/parts/" && echo "kept ${f##*/} ($(du -m "$f" | cut -f1) MiB)"; done
[ -f "$C/manifest.json" ] && cp "$C/manifest.json" "$T/parts/"
[ -d "$C/tok" ] && rm -rf "$T/tok" && cp -r "$C/tok" "$T/tok"   # bench/gpu/gguf_tokenizer.py's output
if [ -f "$C/mxgpu.tar" ]; then rm -rf "$T/mxgpu" && mkdir -p "$T/mxgpu" && tar -xf "$C/mxgpu.tar" -C "$T/mxgpu"; fi
S=$T/mxgpu/bench/gpu
[ -f "$T/parts/manifest.json" ] && "$PY" "$S/unpack.py" --parts "$T/parts" --dest "$T/payload"

# 2. install each complete bundle once, into a folder of its own (no --target replaces another's bin/)
install() {  # NAME TARGET
  local name=$1 target=$2
  [ -f "$target/.mx-installed" ] && { echo "installed $name"; return 0; }
  [ -f "$T/payload/$name.ok" ] || { echo "not yet: $name"; return 0; }
  local t=$SECONDS w=$T/whl-${name%%.*}
  rm -rf "$w" "$target" && mkdir -p "$w"
  "$PY" -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$T/payload/$name" "$w" || return 1
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$w"/*.whl \
    && touch "$target/.mx-installed" && rm -rf "$w" && echo "installed $name in $((SECONDS - t)) s"
}
install vllm026-bundle.tar.xz "$T/site"
install extra-bundle.tar.xz "$T/site2"
for w in "$C"/matrixlang-*.whl; do
  [ -f "$w" ] && "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$T/site3" "$w" \
    && echo "installed ${w##*/}"
done
if [ -f "$T/payload/smollm2.gguf.xz.ok" ] && [ ! -f "$T/models/smollm2.gguf" ]; then
  xz -dc "$T/payload/smollm2.gguf.xz" > "$T/models/smollm2.gguf.tmp" && mv "$T/models/smollm2.gguf.tmp" "$T/models/smollm2.gguf" \
    && echo "gguf: $(du -m "$T/models/smollm2.gguf" | cut -f1) MiB"
fi

export PYTHONPATH=$T/site3:$T/site2:$T/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=$T/site3/bin:$T/site2/bin:$T/site/bin:$PATH
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_CACHE_ROOT=$T/vllm_cache PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 TOKENIZERS_PARALLELISM=false
echo "== setup $((SECONDS - t0)) s"

case $stage in
  prep)
    if [ -f "$T/site2/.mx-installed" ]; then
      (cd "$T/mxbench" && "$PY" "$S/check_reqs.py" 2>&1 | grep -v "^WARNING" | tail -25)
      (cd "$T/mxbench" && "$PY" -c "import ray, ray.serve, matrixlang, matrixlang.runtime, langgraph, openai, gguf; print('imports ok: ray', ray.__version__, 'matrixlang', matrixlang.__version__)")
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv
    ;;
  smol|llama8b)
    cd "$T/mxbench" || exit 1
    "$PY" "$S/bench.py" --model "$stage" --out "$OUT" --work "$T/mxbench" --smol-dir "$T/models/smollm2-135m-instruct" \
      --gguf "$T/models/smollm2.gguf" --tokenizer "$T/tok" "$@"
    ;;
  *) echo "usage: run.sh prep|smol|llama8b [bench.py args]"; exit 2 ;;
esac
echo "== run.sh $stage done in $((SECONDS - t0)) s"
