#!/usr/bin/env bash
# Build the second bundle for the H200 machine (Python 3.12; see docs/gpu.md): Ray (the version
# installed here) with ray[default,serve]'s dependencies, matrixlang's, openai, langgraph and gguf,
# less what the machine's image already has (KINDS.md's package list, copied in image-packages.txt)
# and what the vLLM bundle carries (../shared/gpu/wheels.txt). Ray loses ray/jars (Java workers,
# 31 MiB); py-spy is left out (profiling only). Wheels are repacked stored, tarred and xz'd: one
# .tar.xz. The matrixlang wheel travels beside it (bench/gpu/pack.sh), so that it can be rebuilt alone.
# usage: bench/gpu/make_extra_bundle.sh OUT_DIR [VLLM_WHEELS_TXT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: make_extra_bundle.sh OUT_DIR [wheels.txt]}
vllm_list=${2:-$here/../../../shared/gpu/wheels.txt}
ray_version=${RAY_VERSION:-$(python3 -c 'import ray; print(ray.__version__)')}
mkdir -p "$out/dl" "$out/stage"
rm -f "$out"/stage/*.whl
norm() { tr 'A-Z_.' 'a-z--'; }
sed -E 's/^([^-]+)-([^-]+)-.*/\1==\2/' "$vllm_list" | grep -v '^$' | grep -v '^vllm==' > "$out/constraints.txt"
sed -E 's/^([^-]+)-.*/\1/' "$vllm_list" | norm | sort -u > "$out/in-vllm-bundle.txt"
# grpcio comes from the image (1.84.0 there): grpcio_reflection's generated code refuses an older grpcio
# than it was built with (1.85.1 broke `import ray.serve`), so pin the family to the image's version.
echo "grpcio==${IMAGE_GRPCIO:-1.84.0}" >> "$out/constraints.txt"
norm < "$here/image-packages.txt" | sort -u > "$out/in-image.txt"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -c "$out/constraints.txt" -d "$out/dl" \
  "ray[default,serve]==$ray_version" "lark==1.2.2" jinja2 networkx rich aiohttp openai langgraph "gguf==0.19.0" \
  2>&1 | grep -v "^WARNING: Location" || true
: > "$out/plan.txt"
for w in "$out"/dl/*.whl; do
  b=${w##*/}; n=$(echo "${b%%-*}" | norm)
  if grep -qx "$n" "$out/in-image.txt"; then echo "image  $b" >> "$out/plan.txt"
  elif grep -qx "$n" "$out/in-vllm-bundle.txt"; then echo "vllm   $b" >> "$out/plan.txt"
  elif [ "$n" = py-spy ]; then echo "skip   $b" >> "$out/plan.txt"
  else
    echo "carry  $b" >> "$out/plan.txt"
    case "$n" in
      ray) python3 "$here/repack_wheel.py" "$w" "$out/stage" --drop '^ray/jars/' ;;
      *) python3 "$here/repack_wheel.py" "$w" "$out/stage" >/dev/null ;;
    esac
  fi
done
(cd "$out/stage" && tar -cf - ./*.whl) | xz -9 -T2 > "$out/extra-bundle.tar.xz"
ls -la "$out/extra-bundle.tar.xz"; grep -c '^carry' "$out/plan.txt"
