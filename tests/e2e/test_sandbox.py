"""The decoding sandbox end to end: a run on a (simulated) kernel without Landlock warns once and
reports `sandbox: none`."""

from __future__ import annotations

import pytest

from vivit_batch.cli import main
from vivit_batch.video.sandbox import WITHOUT_LANDLOCK


@pytest.mark.slow
def test_auto_on_a_kernel_without_landlock_warns_once_and_reports_none(
    ray_cluster, tmp_path, monkeypatch, capfd, sources
):
    from vivit_batch.output import Output
    from vivit_batch.testing.checkpoints import make_checkpoint

    monkeypatch.setenv(WITHOUT_LANDLOCK, "1")
    make_checkpoint(tmp_path / "model")
    (tmp_path / "m.txt").write_text(sources[0][0] + "\n")
    args = ["run", "--manifest", str(tmp_path / "m.txt"), "--output", str(tmp_path / "out")]
    args += ["--model", str(tmp_path / "model")]
    assert main(args) == 0
    logged = capfd.readouterr().err.splitlines()
    warned = [line for line in logged if "WARNING" in line and "without a sandbox" in line]
    assert len(warned) == 1 and "no Landlock" in warned[0]  # the summary repeats it, unlogged
    [report] = Output(str(tmp_path / "out")).read_reports()
    assert report.sandbox == "none"
    assert any("without a sandbox" in warning for warning in report.warnings)
