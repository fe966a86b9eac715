"""The "## Pipeline" section of BENCHMARKS.md from `benchmarks.pipeline`'s figures: the prose is
in templates/pipeline.md, the tables and the per-case lines are made here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template

from benchmarks.cpu_sampler import short_name

TEMPLATE = Path(__file__).with_name("templates") / "pipeline.md"
CPUS = 2
"""Ray's `num_cpus` in the benchmark's runs"""
OVERHEAD_TARGET = 0.10
CAPACITY_TARGET = 0.85
MEMORY_TARGET = 1.2
MEMORY_SETTINGS = [
    "resources.decode_batch_size=500",
    "resources.batch_size=500",
    "run.max_error_fraction=1",
]


def render_section(command: str, runs: list[dict], mem: list[dict], env: dict) -> str:
    parts = _template_parts()
    values = {**env, "command": command, "cpus": CPUS, "memory_gib": f"{env['memory_gib']:.0f}"}
    section = _fill(parts["header"], values)
    if runs:
        section += _fill(parts["overhead"], overhead_values(runs))
    if mem:
        section += _fill(parts["memory"], memory_values(mem))
    return section


def overhead_values(runs: list[dict]) -> dict[str, object]:
    return {
        "cpus": CPUS,
        "capacity_target": CAPACITY_TARGET,
        "balance_table": _table(BALANCE_HEADER, [balance_row(r) for r in runs]),
        "balance_verdicts": "\n".join(balance_line(r) for r in runs),
        "plan": describe_plan(runs),
        "rates_table": _table(RATES_HEADER, [rates_row(r) for r in runs]),
        "cpu_table": _table(CPU_HEADER, [cpu_row(r) for r in runs]),
        "verdicts": "\n".join(verdict_line(r) for r in runs),
        "startup_table": _table(STARTUP_HEADER, [startup_row(r) for r in runs]),
        "sources": "\n".join(line for r in runs for line in source_lines(r)),
        "prepare_memory": prepare_memory_line(runs),
    }


BALANCE_HEADER = (
    "model | measured per clip, one core: decode / inference | plan | in the run, CPU s per "
    "clip: decode / inference / driver and Ray | capacity | steady | steady / capacity"
)


def balance_row(r: dict) -> str:
    measured, plan, c = r["calibration"], r["resources"], r["cpu"]
    costs = (
        f"{1000 * measured['decode_s']:.1f} ms / {1000 * measured['inference_s']:.1f} ms"
        if measured.get("decode_s")
        else f"none ({measured.get('failure')})"
    )
    if not c:
        return f"| {r['name']} | {costs} | {plan_text(plan)} | n/a (fewer than two stamps) |"
    p = c["per_clip"]
    return (
        f"| {r['name']} | {costs} | {plan_text(plan)} | {p['decode actor']:.4f} / "
        f"{p['inference actor']:.4f} / {p['driver'] + p['other Ray']:.4f} "
        f"| {fmt(c['capacity'], 3)} | {fmt(r['steady'], 3)} | {fmt(c['capacity_ratio'])} |"
    )


def plan_text(plan: dict) -> str:
    torch = f"{plan['inference_actors']} x {plan['inference_threads']} torch thread(s)"
    return f"{plan['decode_actors']} decode actor(s), {torch}"


def balance_line(r: dict) -> str:
    ratio = (r["cpu"] or {}).get("capacity_ratio")
    verdict = "n/a" if ratio is None else ("met" if ratio >= CAPACITY_TARGET else "missed")
    return f"- {r['name']}: {fmt(ratio)} of capacity, {verdict}."


RATES_HEADER = (
    "model | clips | decode alone | inference alone | expected | end to end | steady "
    "| overhead end to end | overhead steady | first output | start-up | wall "
    "| in-pipeline decode / inference"
)


def rates_row(r: dict) -> str:
    return (
        f"| {r['name']} | {r['clips']} | {fmt(r['decode_alone'])} "
        f"| {fmt(r['inference_alone'], 3)} | {fmt(r['expected'], 3)} ({r['slowest']}) "
        f"| {fmt(r['end_to_end'], 3)} | {fmt(r['steady'], 3)} "
        f"| {pct(r['overhead_end_to_end'])} | {pct(r['overhead_steady'])} "
        f"| {fmt(r['first_output_s'], 1)} s | {fmt(r['startup_s'], 1)} s "
        f"| {fmt(r['wall_s'], 1)} s "
        f"| {fmt(r['in_pipeline_decode'])} / {fmt(r['in_pipeline_inference'], 3)} |"
    )


CPU_HEADER = (
    "model | decode actor s/clip (alone) | inference actor s/clip (alone) "
    "| driver s/clip | other Ray s/clip | core share | bottleneck actor vs alone "
    "| CPU-bound rate (alone) | overhead | fixed"
)


def cpu_row(r: dict) -> str:
    c = r["cpu"]
    if not c:
        return f"| {r['name']} | n/a (fewer than two output stamps) |"
    p, a = c["per_clip"], c["alone_per_clip"]
    return (
        f"| {r['name']} | {p['decode actor']:.4f} ({a['decode']:.4f}) "
        f"| {p['inference actor']:.4f} ({a['inference']:.4f}) "
        f"| {p['driver']:.4f} | {p['other Ray']:.4f} | {c['bottleneck_share']:.2f} "
        f"| {pct(c['bottleneck_overhead'])} | {fmt(c['rate'], 3)} "
        f"({fmt(c['expected'], 3)}) | {pct(c['overhead'])} | {c['fixed_s']:.1f} s |"
    )


def verdict_line(r: dict) -> str:
    o = r["overhead_steady"]
    before, after = r[f"{r['slowest']}_alone_runs"]
    spread = abs(before - after) / ((before + after) / 2)
    verdict = "n/a" if o is None else ("met" if o <= OVERHEAD_TARGET else "missed")
    if o is not None and spread > OVERHEAD_TARGET:
        verdict = f"inconclusive ({r['slowest']} alone ran {100 * spread:.0f}% apart)"
    c = r["cpu"]
    cpu_verdict = "n/a"
    if c:
        cpu_verdict = "met" if c["overhead"] <= OVERHEAD_TARGET else "missed"
        if c["bottleneck_share"] < 0.5:
            cpu_verdict += (
                f" (but the bottleneck actor got only {c['bottleneck_share']:.2f} of a "
                "core: per-second costs, such as Ray's background threads, then weigh "
                "more per clip)"
            )
    decode_runs = ", ".join(fmt(x) for x in r["decode_alone_runs"])
    return (
        f"- {r['name']}: wall clock, steady {pct(o)}, {verdict}; in CPU seconds "
        f"{pct(c['overhead'] if c else None)}, {cpu_verdict}. With start-up, end to "
        f"end: {pct(r['overhead_end_to_end'])} over {r['clips']} clips. (Decode alone "
        f"before, after the pipeline: {decode_runs} clips/s; inference alone timed on "
        f"{r['inference_alone_clips']} clips; `prepare_job`, in the driver and outside "
        f"the wall time: {r['prepare_s']:.1f} s; settings: "
        f"{', '.join(r['settings']) or 'defaults'}.)"
    )


STARTUP_HEADER = (
    "model | first output | start-up | fixed CPU | whole-run CPU s by role "
    "| top processes (CPU s) | `prepare_job` | driver peak RSS after `prepare_job` "
    "| load average during the case"
)


def startup_row(r: dict) -> str:
    c = r["cpu"] or {}
    roles = ", ".join(f"{k} {v:.1f}" for k, v in c.get("whole_run", {}).items())
    top = "; ".join(
        f"{short_name(name, role)} {seconds:.1f}"
        for role, name, seconds in c.get("top_processes", [])[:5]
    )
    return (
        f"| {r['name']} | {fmt(r['first_output_s'], 1)} s | {fmt(r['startup_s'], 1)} s "
        f"| {fmt(c.get('fixed_s'), 1)} s | {roles} | {top} | {r['prepare_s']:.1f} s "
        f"| {r['driver_peak_rss_after_prepare_mib']:.0f} MiB "
        f"| {r['load'][0]} / {r['load'][1]} |"
    )


def source_lines(r: dict) -> list[str]:
    c = r["cpu"]
    if not c:
        return []
    lines = [
        f"- {r['name']}: in steady state the driver and Ray's own processes "
        f"(GCS, raylet, agents, Ray Data's internal actors, task workers) used "
        f"{c['ray_cores']:.2f} of a core; the bottleneck actor used "
        f"{pct(c['bottleneck_overhead'])} CPU per clip against the stage alone."
    ]
    if c["overhead"] > OVERHEAD_TARGET:
        lines.append("  " + missed_note(r))
    return lines


def prepare_memory_line(runs: list[dict]) -> str:
    if len(runs) < 2:
        return ""
    rss = [r["driver_peak_rss_after_prepare_mib"] for r in runs]
    return (
        f"- `prepare_job` does not load the weights into the driver (it checks their "
        f"shapes from the files' headers): its peak RSS after `prepare_job` is "
        f"{rss[-1]:.0f} MiB with the {runs[-1]['name'].split(' (')[0]} model against "
        f"{rss[0]:.0f} MiB with the tiny one."
    )


def missed_note(r: dict) -> str:
    """Why a case's CPU-seconds overhead is above the target, from its own figures."""
    from vivit_batch.config import load_config

    c, stage = r["cpu"], r["slowest"]
    alone_runs = ", ".join(fmt(x, 3) for x in r[f"{stage}_alone_runs"])
    noise = (
        "On this shared machine the figure also moves between runs by about as much as the "
        f"target (the two runs of the stage alone here: {alone_runs} clips/s)."
    )
    alone = c["alone_per_clip"][stage]
    if stage != "decode":
        window = c.get("window")
        span = f" ({window[0]} clips in {window[1]:.1f} s)" if window else ""
        return (
            f"Missed: the {stage} actor used {pct(c['bottleneck_overhead'])} CPU per clip "
            f"against the stage alone over a short steady window{span}; Ray's per-call "
            f"cost is milliseconds (see the decode-bound case) against {alone:.1f} s of work "
            "per clip, so this is more likely the measurement's noise and sharing the cores "
            "(caches, memory bandwidth) with the driver and Ray's processes than Ray's own "
            "work. " + noise
        )
    batch = load_config(None, r["settings"]).resources.decode_batch_size
    extra_ms = (c["per_clip"][f"{stage} actor"] - alone) * batch * 1000
    return (
        f"Missed: it is the {stage} actor's own extra CPU, {extra_ms:.1f} ms per call of "
        f"{batch} videos that take {1000 * alone:.1f} ms each alone: Ray's per-call work in "
        "the actor (task dispatch, block conversion, putting the output block in the object "
        "store) and sharing the cores with the driver and Ray's processes. Being per call, it "
        "should shrink with a larger `resources.decode_batch_size` and matter less for videos "
        "that take longer to decode (a 720p clip: about 200 ms, see the Decode section). " + noise
    )


MEMORY_HEADER = (
    "rows | run | after `ray.init` | after `prepare_job` | after `run_job` (peak) "
    "| growth in `run_job` | peak / fresh 1,000-row peak | rows written (replaced) "
    "| files | `run_job` time"
)


def memory_values(mem: list[dict]) -> dict[str, object]:
    fresh = [m for m in mem if m["kind"] == "fresh"]
    small, large = fresh[0], fresh[-1]
    ratio = large["peak_mib"] / small["peak_mib"]
    per_row = (_growth(large) - _growth(small)) * 2**20 / (large["rows"] - small["rows"])
    rows = [
        f"| {m['rows']:,} | {m['kind']} | {m['peak_after_init_mib']:.0f} "
        f"| {m['peak_before_run_mib']:.0f} | {m['peak_mib']:.0f} | {_growth(m):+.0f} "
        f"| {m['peak_mib'] / small['peak_mib']:.2f}x "
        f"| {m['rows_written']:,} ({m['rows_replaced']:,}) | {m['files']} "
        f"| {m['run_s']:.1f} s |"
        for m in mem
    ]
    return {
        "memory_settings": ", ".join(f"`{x}`" for x in MEMORY_SETTINGS),
        "memory_table": _table(MEMORY_HEADER, rows),
        "large_rows": f"{large['rows']:,}",
        "small_rows": f"{small['rows']:,}",
        "target": MEMORY_TARGET,
        "ratio": f"{ratio:.2f}",
        "verdict": "met" if ratio <= MEMORY_TARGET else "missed",
        "per_row": f"{per_row:+.0f}",
        "memory_notes": "\n".join(memory_notes(mem, small, large)),
    }


def memory_notes(mem: list[dict], small: dict, large: dict) -> list[str]:
    lines = []
    for m in mem:
        if m["kind"] == "fresh":
            continue
        extra = (_growth(m) - _growth(large)) * 2**20 / m["rows"]
        rerun_ratio = m["peak_mib"] / small["peak_mib"]
        lines.append(
            f"- {m['kind']} over {m['rows']:,} committed rows: {rerun_ratio:.2f}x the fresh "
            f"{small['rows']:,}-row peak "
            f"({'within' if rerun_ratio <= MEMORY_TARGET else 'above'} {MEMORY_TARGET}x); "
            f"{extra:+.0f} bytes per committed row over the fresh run's growth."
        )
    if any(m["kind"] != "fresh" and m["peak_mib"] / small["peak_mib"] > MEMORY_TARGET for m in mem):
        lines.append(
            "- A rerun's driver holds state per committed row (`job.run_job`), all of "
            "it in Arrow arrays: the (video_id, status) table of every committed file "
            "(`Output.committed`), the ids to relabel and the ids to skip "
            "(`work`), and where the rows of those it relabels are "
            "(`replacing.Relabelled`)."
        )
    rows_per_file = large["rows"] / large["files"] if large["files"] else 0
    lines.append(
        f"- Files: the fresh {large['rows']:,}-row run wrote {large['files']} files, "
        f"{rows_per_file:,.0f} rows each on average, with `output.rows_per_file` at its "
        "default of 5,000 (documented as an upper bound)."
    )
    return lines


def describe_plan(runs: list[dict]) -> str:
    plans = {
        json.dumps({k: v for k, v in r["resources"].items() if k != "decode_nodes"}) for r in runs
    }
    return "; ".join(sorted(plans))


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def _growth(m: dict) -> float:
    return m["peak_mib"] - m["peak_before_run_mib"]


def _table(header: str, rows: list[str]) -> str:
    columns = header.count("|") + 1
    return "\n".join([f"| {header} |", "| " + " | ".join(["---"] * columns) + " |", *rows])


def _template_parts() -> dict[str, str]:
    """The template's parts, by the name in their `<!-- part: NAME -->` line."""
    pieces = re.split(r"^<!-- part: (\w+) -->\n", TEMPLATE.read_text(), flags=re.M)
    return dict(zip(pieces[1::2], pieces[2::2], strict=True))


def _fill(template: str, values: dict[str, object]) -> str:
    """Substitute `values`; a placeholder that is a whole line and has nothing to say goes with
    its line."""
    for name, value in values.items():
        if value == "":
            template = template.replace(f"${name}\n", "")
    return Template(template).substitute(values)
