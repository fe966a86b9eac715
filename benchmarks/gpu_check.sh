#!/usr/bin/env bash
# GPU readiness in one go, on a machine with an NVIDIA GPU (about 12 minutes, or BUDGET_S):
#   1. `python -m benchmarks.inference_stage`: the stage's host work per clip on one core, then
#      the stage against the bare forward pass on the GPU (one batch at a time and two),
#   2. `python -m benchmarks.nvdec` where PyNvVideoCodec is installed: NVDEC clips/s and frames/s
#      per engine (bare, and the decode stage's own path) against the CPU decode path per core,
#      and NVDEC's pixels against PyAV's,
#   3. `python -m benchmarks.gpu`: base-size model throughput in fp32, bf16 and fp16, and the
#      job on embedded Ray (ROWS manifest rows, 1000 by default) with decode.device=cpu, and
#      where PyNvVideoCodec is installed again with cuda and auto,
#   4. `python -m benchmarks.gpu_variants`: the forward pass at batch 32 as the stage runs it,
#      with bf16 weights, compiled (inductor), with CUDA graphs, flash attention forced (MFU),
#   5. the tests marked `gpu` (CUDA inference against the CPU in fp32 / bf16 / fp16, the device
#      an inference actor opens and reports, NVDEC's clips, error codes and job rows),
#   and after each step its figures rendered into BENCHMARKS.md (dated, naming the machine).
#
#   benchmarks/gpu_check.sh              # from anywhere; runs in the repository root
#   STEPS=tests,nvdec benchmarks/gpu_check.sh   # some steps only (stage, nvdec, job, variants,
#                                        # tests; default: all)
#   BUDGET_S=540 RESULTS=$OUT benchmarks/gpu_check.sh  # on a lent machine (README: GPU check):
#                                        # the steps in order until BUDGET_S seconds from the
#                                        # script's start are spent, each cut to what is left;
#                                        # figures, BENCHMARKS.md and its log copied to RESULTS
#                                        # as it goes (a step that fails: the next one runs)
#   benchmarks/gpu_check.sh --dry-run    # the same steps on the CPU: tiny model, 64 small
#                                        # videos, GPU tests skipped; BENCHMARKS.md untouched
#
# Uses VENV (default .venv); if there is none, makes it with PyPI's torch, a CUDA build on
# Linux. Where VENV's Python has no Ray or PyAV and
# .devkit holds a kit for its version (benchmarks/device_kit.sh), it unpacks that kit into it
# and installs this checkout without dependencies (a machine without a package index).
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
python="$venv/bin/python3"
figures_dir=${RESULTS:-$(mktemp -d)}
mkdir -p "$figures_dir"
if [[ -n "${RESULTS:-}" ]]; then exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1; fi

if [[ ! -x "$python" ]]; then
  echo "== making $venv (pip install -c constraints.txt -e '.[test]')"
  python3 -m venv "$venv"
  timeout 1200 "$venv/bin/pip" install -q -c constraints.txt -e '.[test]'
fi
kit=.devkit/site-cp$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])').tar.xz
if ! "$python" -c 'import ray, av' 2>/dev/null && [[ -e "$kit" ]]; then
  site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "== unpacking $kit into $site"
  # Python's tarfile rather than tar: the machine may lack xz
  "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="tar")' \
    "$kit" "$site"
  # the `ray` command, as Ray's wheel would install it (the tests start their cluster with it)
  printf '#!%s\nimport sys\nfrom ray.scripts.scripts import main\nsys.exit(main())\n' \
    "$(cd "$venv" && pwd)/bin/python3" >"$venv/bin/ray"
  chmod +x "$venv/bin/ray"
  "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e . ||
    echo "== $venv: this checkout not installed; it is imported from the working directory"
fi
"$python" -c 'import importlib.metadata as m, sys
names = ("torch", "ray", "av", "pyarrow", "numpy", "huggingface_hub", "pynvvideocodec")
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "missing"
print("== Python", sys.version.split()[0], *(f"{n} {version(n)}" for n in names))'
if ! $dry_run && ! "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "error: torch in $venv cannot use CUDA ($("$python" -c 'import torch; print(torch.__version__)'))." \
    "Install a CUDA build: $venv/bin/pip install --index-url https://download.pytorch.org/whl/cu130" \
    "-c constraints.txt torch; or run with --dry-run" >&2
  exit 2
fi
if ! $dry_run && ! "$python" -c 'import PyNvVideoCodec' 2>/dev/null && [[ ! -e "$kit" ]]; then
  timeout 120 "$python" -m pip install -q pynvvideocodec==2.2.4 || true
fi
if ! $dry_run; then  # what NVDEC needs from the driver: its decode (and, to import, encode) libraries
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  if [[ -d /usr/local/nvidia/lib64 ]]; then  # the driver's folder where a container mounts it
    export LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  fi
  echo "== NVIDIA_DRIVER_CAPABILITIES=${NVIDIA_DRIVER_CAPABILITIES:-}; the driver's video" \
    "libraries: $( (ldconfig -p; ls /usr/local/nvidia/lib64) 2>/dev/null |
      grep -oE 'lib(nvcuvid|nvidia-encode)\.so[.0-9]*' | sort -u | tr '\n' ' ')"
fi

budget=${BUDGET_S:-100000}
step() {  # step SECONDS COMMAND...: one step, cut to SECONDS or what is left of BUDGET_S
  local limit=$1 left=$((budget - SECONDS))
  shift
  if ((left < 30)); then
    echo "== skipped, BUDGET_S spent: $*"
    return 0
  fi
  limit=$((limit < left ? limit : left))
  echo "== $* (at most $limit s; $SECONDS s since the start)"
  timeout --kill-after=10 "$limit" "$@" || failed "$?" "$*"
}
failures=0
failed() {  # failed CODE WHAT: say so, count it, and go on to the next step
  echo "== exit code $1: $2"
  failures=$((failures + 1))
}
render() {  # render MODULE JSON: its figures into BENCHMARKS.md, and both into RESULTS
  if [[ -e "$2" ]]; then
    "$python" -m "$1" --render "$2" || failed "$?" "rendering $2"
  fi
  if [[ -n "${RESULTS:-}" ]]; then cp BENCHMARKS.md "$RESULTS/"; fi
}
want() {  # want NAME: whether STEPS (comma-separated; empty: all) names this step
  [[ -z "${STEPS:-}" || ",$STEPS," == *",$1,"* ]]
}

stage=$figures_dir/stage.json
if want stage; then step 60 "$python" -m benchmarks.inference_stage --json "$stage"; fi
if $dry_run; then
  if want job; then step 300 "$python" -m benchmarks.gpu --quick --json "$figures_dir/gpu.json"; fi
  if want tests; then step 120 "$python" -m pytest -m gpu -q -rs -p no:cacheprovider tests/e2e/test_gpu.py; fi
  echo "dry run: BENCHMARKS.md left as it is; figures in $figures_dir"
  exit $((failures > 0))
fi
if want stage; then
  step 120 "$python" -m benchmarks.inference_stage --device cuda --json "$stage"
  render benchmarks.inference_stage "$stage"
fi
if want nvdec && "$python" -c 'import PyNvVideoCodec'; then
  step 180 "$python" -m benchmarks.nvdec --seconds 6 --json "$figures_dir/nvdec.json"
  render benchmarks.nvdec "$figures_dir/nvdec.json"
elif want nvdec; then
  echo "== NVDEC left out: PyNvVideoCodec cannot be imported (pip install pynvvideocodec==2.2.4)"
fi
if want job; then
  step 360 "$python" -m benchmarks.gpu --rows "$rows" --json "$figures_dir/gpu.json"
  render benchmarks.gpu "$figures_dir/gpu.json"
fi
if want variants; then
  step 240 "$python" -m benchmarks.gpu_variants --json "$figures_dir/variants.json"
  render benchmarks.gpu_variants "$figures_dir/variants.json"
fi
if want tests; then step 240 "$python" -m pytest -m gpu -q -rs -p no:cacheprovider tests/e2e/test_gpu.py; fi
echo "== done in $SECONDS s, $failures step(s) failed"
exit $((failures > 0))
