"""The record of the device an inference actor labels with (`device.describe` builds it; each
row and the run report carry it), read without torch: the device kinds and the one-line summary
that `report` and `validate` print."""

from __future__ import annotations

CPU, CUDA = "cpu", "cuda"


def summary(record: dict) -> str:
    """One line for people: 'cuda:0 NVIDIA H200 (139.8 GiB), bf16, ... on node x'."""
    memory = f" ({record['memory_gib']} GiB)" if record.get("memory_gib") else ""
    threads = f", {record['threads']} threads" if record["device"] == CPU else ""
    return (
        f"{record['device']} {record['name']}{memory}{threads}, {record['precision']}, "
        f"torch {record['torch']} (CUDA {record['cuda'] or 'none'}) on node {record['node']}"
    )
