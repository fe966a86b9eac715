"""`vivit-batch report OUTPUT`: what an output dataset holds and how its runs went."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from vivit_batch.device import summary
from vivit_batch.output import Output, RunReport


def summarise_output(output_uri: str, top: int = 10) -> str:
    output = Output(output_uri)
    table = read_output(output_uri, columns=["status", "error_code", "label"])
    status = Counter(table.column("status").to_pylist())
    errors = Counter(c for c in table.column("error_code").to_pylist() if c)
    labels = Counter(x for x in table.column("label").to_pylist() if x)
    lines = [f"{output_uri}: {table.num_rows} rows", f"  status: {dict(status)}"]
    if errors:
        lines.append("  errors: " + ", ".join(f"{c} {n}" for c, n in errors.most_common()))
    lines.append(f"  top labels ({len(labels)} distinct):")
    lines += [f"    {n:>8}  {label}" for label, n in labels.most_common(top)]
    lines.append("  runs:")
    for run in output.read_reports():
        speed = run.throughput
        lines.append(
            f"    {run.run_id}: {run.rows_written} rows, {run.wall_seconds:.1f} s, "
            f"{speed.clips_per_second} clips/s (decode {speed.decode_clips_per_second}, "
            f"inference {speed.inference_clips_per_second})"
        )
        lines += [f"      {line}" for line in device_lines(run)]
    return "\n".join(lines)


def device_lines(report: RunReport) -> list[str]:
    """'inference: ...' for each kind of device the run's inference actors used, then the
    run's warnings."""
    kinds = Counter(summary(device) for device in report.inference_devices)
    lines = [f"inference: {n} actor(s) on {kind}" for kind, n in kinds.items()]
    return lines + [f"warning: {warning}" for warning in dict.fromkeys(report.warnings)]


def read_output(output_uri: str, columns: list[str] | None = None) -> pa.Table:
    """The output's committed rows, as any reader sees them."""
    return Output(output_uri).rows(columns)


def run_summary(report: RunReport) -> str:
    """What a finished run prints."""
    output_uri = report.config["output"]["uri"]
    lines = [
        f"\nrun {report.run_id}: {report.rows_written} rows in {report.wall_seconds:.1f} s "
        f"({report.throughput.clips_per_second} clips/s)",
        f"  status: {report.counts['status']}",
    ]
    if report.counts["error_code"]:
        lines.append(f"  errors: {report.counts['error_code']}")
    lines += [f"  {line}" for line in device_lines(report)]
    lines += [
        f"  output: {output_uri}",
        f"  report: {Output(output_uri).report_uri(report.run_id)}",
    ]
    return "\n".join(lines)
