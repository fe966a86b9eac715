#!/usr/bin/env bash
# The packages benchmarks/gpu_check.sh needs that a lent GPU machine lacks, packed small enough
# for the `device` tool to carry: its image ('cuda': Python 3.12 with torch, pyarrow, pandas,
# huggingface_hub, transformers, scikit-learn...) has no Ray, PyAV or PyNvVideoCodec, it reaches
# no package index, and a call carries at most 64 MiB. Their wheels are about 145 MB; unpacked,
# without what the job never loads (Ray's Java jars, RLlib, Serve, its LLM library, the dashboard's
# web client; PyNvVideoCodec's FFmpeg sources and samples) and packed with xz, about 53 MB.
#
#   benchmarks/device_kit.sh                      # .devkit/site-cp312.tar.xz: the device's Python
#   PYTHON_VERSION=3.11 benchmarks/device_kit.sh  # for this machine's Python (to try it here)
#
# gpu_check.sh unpacks it into its Python's site-packages where `import ray, av` fails. The
# versions are this checkout's: constraints.txt's Ray, and those .venv holds.
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=${PYTHON_VERSION:-3.12}
kit=.devkit/site-cp${python_version/./}.tar.xz
packages=(
  "ray==$(sed -n 's/^ray==//p' constraints.txt)"
  "pynvvideocodec==$(sed -n 's/.*"pynvvideocodec==\([^"]*\)".*/\1/p' pyproject.toml)"
)
for name in av jsonschema jsonschema-specifications referencing rpds-py; do
  packages+=("$name==$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))")")
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
echo "== downloading ${packages[*]} for CPython $python_version"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" \
  --implementation cp "${platforms[@]}" -d "$work/wheels" "${packages[@]}"

site=$work/site
for wheel in "$work"/wheels/*.whl; do unzip -q -o "$wheel" -d "$site"; done
rm -rf "$site"/ray/{jars,rllib,serve,llm} \
  "$site"/ray/dashboard/client/build "$site"/samples "$site"/pynvvideocodec-*.data

mkdir -p "$(dirname "$kit")"
echo "== packing $(du -sh "$site" | cut -f1) into $kit (xz, about a minute and a half)"
tar -C "$site" -cf - . | xz -9 -T0 >"$kit.partial"
mv "$kit.partial" "$kit"
printf "%s\n" "${packages[@]}" >"${kit%.tar.xz}.txt"
echo "== $kit: $(du -h "$kit" | cut -f1), for CPython $python_version: ${packages[*]}"
