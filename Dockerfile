# vivit-batch on Ray: the image of every pod of configs/k8s/ (head, CPU and GPU workers, and the
# CronJob's lock check). Two variants from this one file, tagged with the project's version:
#
#   docker build -t vivit-batch:0.1.0 .
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t vivit-batch:0.1.0-cuda .
#
# The CPU image gets torch's CPU wheel (no CUDA libraries: ~1 GB less). The CUDA image gets a
# CUDA build of the same torch version: its wheels carry the CUDA runtime libraries, so the
# base stays plain Python and only the node's NVIDIA driver is needed (mounted by the NVIDIA
# container toolkit). Pick the cuXYZ index your nodes' driver supports
# (https://pytorch.org/get-started/locally/).
#
# Both get PyNvVideoCodec (the `nvdec` extra, a 27 MB wheel): the GPU pods' decode actors
# decode on the GPU's NVDEC engines with it, and the run's driver (on the head: the CPU image)
# plans those actors only where it finds it (README: Decoding on the GPU).
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# KubeRay's default health probes call wget; Ray runs as an unprivileged user.
RUN apt-get update && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 ray \
    && mkdir -p /cache/huggingface && chown ray /cache/huggingface

WORKDIR /app
COPY constraints.txt ./
# torch first, from the chosen index, at the version constraints.txt pins (it is the one pip
# then keeps); the project after it, with the same constraints as the README's install.
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} -c constraints.txt torch
COPY pyproject.toml README.md ./
COPY vivit_batch/ vivit_batch/
COPY configs/ configs/
COPY jobs/ jobs/
RUN pip install --no-cache-dir -c constraints.txt '.[nvdec]' 'ray[default]'

# Hugging Face downloads go to /cache/huggingface: mount a persistent volume there so that
# each node does not download the model again every night (configs/k8s/rayjob.yaml). The
# NVIDIA container toolkit mounts the driver's video libraries, which NVDEC needs, only for
# the `video` capability.
ENV HF_HOME=/cache/huggingface \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility,video \
    PYTHONUNBUFFERED=1
USER ray
CMD ["vivit-batch", "--help"]
