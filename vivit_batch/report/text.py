"""The text reports: `vivit-batch report OUTPUT`'s summary, and what a finished run prints."""

from __future__ import annotations

from vivit_batch.output import RELABEL_MODE, Output, RunReport, Throughput
from vivit_batch.report.stats import Accuracy, OutputStats, RunStats, SegmentStats, device_kinds


def summary_text(stats: OutputStats, top: int = 10) -> str:
    lines = [f"{stats.output}: {stats.rows} rows", f"  status: {stats.status}"]
    if stats.unfinished_relabel:
        lines.append(f"  warning: {stats.unfinished_relabel}")
    if stats.segments:
        lines.append(f"  {segments_line(stats.segments)}")
    if stats.error_codes:
        lines.append("  errors: " + ", ".join(f"{c} {n}" for c, n in stats.error_codes.items()))
    if stats.accuracy:
        lines.append(f"  {accuracy_line(stats.accuracy)}")
    lines += top_labels(stats, top)
    lines.append("  runs:")
    for run in stats.runs:
        if run.mode == RELABEL_MODE:  # no video decoded: its rows and time only
            lines.append(
                f"    {run.run_id}: relabel, {run.rows_written} rows, {run.wall_seconds:.1f} s"
            )
            lines += [f"      warning: {warning}" for warning in run.warnings]
            continue
        lines.append(
            f"    {run.run_id}: {run.rows_written} rows, {run.wall_seconds:.1f} s"
            + throughput_text(run)
        )
        lines += [f"      {line}" for line in devices_then_warnings(run.devices, run.warnings)]
    return "\n".join(lines)


def throughput_text(run: RunStats) -> str:
    """', N clips/s (decode D, inference I)', of the figures the run's report has (a run that
    decoded nothing has no stage figures)."""
    if run.clips_per_second is None:
        return ""
    stages = {"decode": run.decode_clips_per_second, "inference": run.inference_clips_per_second}
    known = [f"{stage} {value}" for stage, value in stages.items() if value is not None]
    return f", {run.clips_per_second} clips/s" + (f" ({', '.join(known)})" if known else "")


def segments_line(segments: SegmentStats) -> str:
    return (
        f"segments: {segments.videos} videos ({segments.videos_with_errors} with errors), "
        f"{segments.segments} labelled segments"
    )


def top_labels(stats: OutputStats, top: int) -> list[str]:
    """By rows; in seconds of video for a segments output."""
    if stats.segments:
        seconds = stats.segments.label_seconds
        return [f"  top labels ({len(seconds)} distinct), in seconds of video:"] + [
            f"    {s:>8.1f}  {label}" for label, s in list(seconds.items())[:top]
        ]
    return [f"  top labels ({len(stats.labels)} distinct):"] + [
        f"    {n:>8}  {label}" for label, n in list(stats.labels.items())[:top]
    ]


def accuracy_line(accuracy: Accuracy) -> str:
    if not accuracy.rows:
        return f"accuracy: no labelled row has a {accuracy.truth_column} value"
    return (
        f"accuracy against {accuracy.truth_column} ({accuracy.rows} labelled rows): "
        f"top-1 {accuracy.top1:.1%}, {accuracy.top5_name} {accuracy.top5:.1%}"
    )


def device_lines(report: RunReport) -> list[str]:
    """'inference: ...' for each kind of device the run's inference actors used, then the
    run's warnings."""
    return devices_then_warnings(device_kinds(report), list(dict.fromkeys(report.warnings)))


def devices_then_warnings(devices: list[str], warnings: list[str]) -> list[str]:
    return [f"inference: {kind}" for kind in devices] + [f"warning: {w}" for w in warnings]


def videos_of(report: RunReport) -> str:
    """Segments mode: how many videos the rows label."""
    if report.videos_written in (0, report.rows_written):
        return ""
    return f" ({report.videos_written} videos)"


def decoding_text(throughput: Throughput) -> str:
    """Who decoded what, where there were NVDEC decode actors: 'NVDEC 812 of 1000 clips
    (41.2 clips/s), the CPU 188 (9.5 clips/s)'."""
    cpu_clips = throughput.clips - throughput.nvdec_clips
    return (
        f"NVDEC {throughput.nvdec_clips} of {throughput.clips} clips "
        f"({throughput.nvdec_decode_clips_per_second} clips/s), the CPU {cpu_clips} "
        f"({throughput.cpu_decode_clips_per_second} clips/s)"
    )


def run_summary(report: RunReport) -> str:
    """What a finished run prints."""
    output_uri = report.config["output"]["uri"]
    lines = [
        f"\nrun {report.run_id}: {report.rows_written} rows{videos_of(report)} in "
        f"{report.wall_seconds:.1f} s ({report.throughput.clips_per_second} clips/s)",
        f"  status: {report.counts['status']}",
    ]
    if report.counts["error_code"]:
        lines.append(f"  errors: {report.counts['error_code']}")
    if report.resources.get("gpu_decoders"):
        lines.append(f"  decoding: {decoding_text(report.throughput)}")
    lines += [f"  {line}" for line in device_lines(report)]
    lines += [
        f"  output: {output_uri}",
        f"  report: {Output(output_uri).report_uri(report.run_id)}",
    ]
    return "\n".join(lines)
