#!/usr/bin/env bash
# GPU readiness in one go, on a machine with an NVIDIA GPU (about 12 minutes, 26 at most):
#   1. the tests marked `gpu` (CUDA inference against the CPU in fp32 / bf16 / fp16, the device
#      an inference actor opens and reports),
#   2. `python -m benchmarks.inference_stage`: the stage's host work per clip on one core, then
#      the stage against the bare forward pass on the GPU (one batch at a time and two),
#   3. `python -m benchmarks.gpu_variants`: the forward pass at batch 32 as the stage runs it,
#      with bf16 weights, compiled (inductor), with CUDA graphs, flash attention forced (MFU),
#   4. `python -m benchmarks.nvdec` where PyNvVideoCodec is installed: NVDEC clips/s and frames/s
#      per engine (bare, and the decode stage's own path) against the CPU decode path per core,
#      and NVDEC's pixels against PyAV's,
#   5. `python -m benchmarks.gpu`: base-size model throughput in fp32, bf16 and fp16, and the
#      job on embedded Ray (ROWS manifest rows, 1000 by default) with decode.device=cpu, and
#      where PyNvVideoCodec is installed again with cuda and auto,
#   6. their figures rendered into BENCHMARKS.md's GPU section (dated, naming the machine).
#
#   benchmarks/gpu_check.sh              # from anywhere; runs in the repository root
#   STEPS=tests,nvdec benchmarks/gpu_check.sh   # some steps only (tests, stage, variants,
#                                        # nvdec, job; default: all), for short device time
#   benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU: tiny model, 64 small
#                                        # videos, GPU tests skipped; BENCHMARKS.md untouched
#
# Uses VENV (default .venv); if there is none, makes it with PyPI's torch, a CUDA build on
# Linux (that install is outside the 8 minutes). Each step runs under its own `timeout`.
# PyNvVideoCodec comes from a wheel in .whl/ where there is one (a machine without internet:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 pynvvideocodec==2.2.4 -d .whl
# with the device's Python version), else from the index if it answers.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=false
case "${1:-}" in
  --dry-run) dry_run=true ;;
  "") ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
venv=${VENV:-.venv}
rows=${ROWS:-1000}
python="$venv/bin/python"

if [[ ! -x "$python" ]]; then
  echo "== making $venv (pip install -c constraints.txt -e '.[test]')"
  python3 -m venv "$venv"
  timeout 1200 "$venv/bin/pip" install -q -c constraints.txt -e '.[test]'
fi
if ! $dry_run && ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "error: torch in $venv cannot use CUDA ($("$python" -c 'import torch; print(torch.__version__)'))." \
    "Install a CUDA build: $venv/bin/pip install --index-url https://download.pytorch.org/whl/cu130" \
    "-c constraints.txt torch; or run with --dry-run" >&2
  exit 2
fi

step() {  # step SECONDS COMMAND...: one step, killed if it runs past SECONDS
  local limit=$1
  shift
  echo "== $* (at most $limit s)"
  timeout --kill-after=10 "$limit" "$@"
}

if ! $dry_run && ! "$python" -c 'import PyNvVideoCodec' 2>/dev/null; then
  wheels=(.whl/pynvvideocodec-*.whl)
  if [[ -e "${wheels[0]}" ]]; then
    "$venv/bin/pip" install -q --no-deps "${wheels[@]}" || true
  else
    timeout 120 "$venv/bin/pip" install -q pynvvideocodec==2.2.4 || true
  fi
fi

want() {  # want NAME: whether STEPS (comma-separated; empty: all) names this step
  [[ -z "${STEPS:-}" || ",$STEPS," == *",$1,"* ]]
}

started=$SECONDS
figures=$(mktemp -d)/gpu.json
if want tests; then step 240 "$python" -m pytest -m gpu -q -rs -p no:cacheprovider tests/; fi
stage=$(dirname "$figures")/stage.json
if want stage; then step 60 "$python" -m benchmarks.inference_stage --json "$stage"; fi
if $dry_run; then
  if want job; then step 300 "$python" -m benchmarks.gpu --quick --json "$figures"; fi
  echo "dry run: BENCHMARKS.md left as it is; figures in $figures"
else
  if want stage; then
    step 120 "$python" -m benchmarks.inference_stage --device cuda --json "$stage"
    step 10 "$python" -m benchmarks.inference_stage --render "$stage"
  fi
  if want variants; then
    variants=$(dirname "$figures")/variants.json
    step 240 "$python" -m benchmarks.gpu_variants --json "$variants"
    step 10 "$python" -m benchmarks.gpu_variants --render "$variants"
  fi
  if want nvdec && "$python" -c 'import PyNvVideoCodec' 2>/dev/null; then
    nvdec=$(dirname "$figures")/nvdec.json
    step 240 "$python" -m benchmarks.nvdec --seconds 8 --json "$nvdec"
    step 10 "$python" -m benchmarks.nvdec --render "$nvdec"
  elif want nvdec; then
    echo "== NVDEC left out: PyNvVideoCodec is not installed (pip install pynvvideocodec==2.2.4)"
  fi
  if want job; then
    step 540 "$python" -m benchmarks.gpu --rows "$rows" --json "$figures"
    step 30 "$python" -m benchmarks.gpu --render "$figures"
  fi
fi
echo "== done in $((SECONDS - started)) s"
