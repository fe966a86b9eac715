"""The decoding workers' sandbox (`video.sandbox`) and their parent-served reads (`video.served`).

A worker with the sandbox on runs a probe in place of decoding (`TEST_PROBE`, honoured only when
the test sets it before the decoder starts): it cannot read a credentials file, reach a TCP
server on 127.0.0.1 or create a file, and its environment holds no credentials or home; the same
probe without the sandbox can, so the probe sees what it claims to. Sandboxed decoding of local,
S3 (moto) and http (a local server) videos equals decoding in process, pixel for pixel. A kernel
without Landlock is simulated (`WITHOUT_LANDLOCK`, honoured only by `sandbox.probe`):
`decode.sandbox=required` is exit 2 naming it, `auto` runs with one warning and `sandbox: none`.

The end-to-end half (slow); the fast tests are in tests/unit."""

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
