"""`vivit-batch relabel`: an output's predictions recomputed from its stored embeddings by a head
from train-head, committed through the output's protocol (lock, `_versions/`, one row per video
throughout), agreeing with `run --model HEAD` on the same videos."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from tests.helpers.relabelling import CLASSES, by_video, generate, relabel
from tests.helpers.s3 import ACCESS_KEY, SECRET_KEY
from vivit_batch.cli import main
from vivit_batch.config import load_config
from vivit_batch.demo import CHECKPOINT_DIR
from vivit_batch.fingerprint import fingerprint
from vivit_batch.model import load_pretrained
from vivit_batch.output import RELABELLING, Output, Unlocked
from vivit_batch.output.dataset import ARCHIVED_SUFFIX
from vivit_batch.output.schema import PREDICTION_COLUMNS
from vivit_batch.report import output_stats, summary_text
from vivit_batch.report.html import render_html
from vivit_batch.testing.checkpoints import make_checkpoint
from vivit_batch.testing.outputs import label_in_process


def test_relabel_recomputes_predictions_and_leaves_every_other_column_unchanged(
    tmp_path, tiny, capsys
):
    directory, sha256 = tiny
    head = directory / "head"
    output = generate(tmp_path / "out", sha256, labelled_every=3)
    before = by_video(ds.dataset(output).to_table())
    files = sorted(p.name for p in output.glob("*.parquet"))
    identity = Output(str(output)).read_identity()

    assert relabel(output, head) == 0
    after = by_video(ds.dataset(output).to_table())
    assert after.schema == before.schema
    assert sorted(p.name for p in output.glob("*.parquet")) == files  # replaced in place
    predictions = set(PREDICTION_COLUMNS)
    for name in after.column_names:
        if name not in predictions:
            assert after[name].equals(before[name]), name
    ok = pc.equal(after["status"], "ok")
    errors = pc.invert(ok)
    for name in predictions:  # error rows carried over as they were
        assert after.filter(errors)[name].equals(before.filter(errors)[name]), name

    # the ok rows' predictions: softmax of the head's classifier over the stored embedding
    model = load_pretrained(head)
    relabelled = after.filter(ok)
    embeddings = torch.tensor(np.stack(relabelled["embedding"].to_numpy(zero_copy_only=False)))
    with torch.no_grad():
        probabilities = model.classifier(embeddings).softmax(-1)
    scores, ids = probabilities.topk(3)  # the rows kept 5, the head has 3 classes
    assert relabelled["topk_ids"].to_pylist() == ids.tolist()
    np.testing.assert_allclose(np.stack(relabelled["topk_scores"].to_numpy()), scores, atol=1e-6)
    assert relabelled["label"].to_pylist() == [CLASSES[i] for i in ids[:, 0].tolist()]
    assert relabelled["label_id"].to_pylist() == ids[:, 0].tolist()
    np.testing.assert_allclose(relabelled["score"].to_numpy(), scores[:, 0], atol=1e-6)
    assert relabelled["topk_labels"].to_pylist() == [[CLASSES[i] for i in r] for r in ids.tolist()]
    truth = relabelled.filter(pc.is_valid(relabelled["manifest_label"]))
    assert pc.all(pc.equal(truth["label"], truth["manifest_label"])).as_py()

    # the previous version kept, the identity now the head's, a run report
    current = Output(str(output))
    assert current.read_identity() == {
        **identity,
        "model_source": str(head),
        "weights_sha256": fingerprint((head / "model.safetensors",)),
    }
    [archive] = (output / "_versions").iterdir()
    assert json.loads((archive / "_dataset.json").read_text()) == identity
    kept = ds.dataset(archive, format="parquet").to_table()
    assert by_video(kept).equals(before)
    assert sorted(p.name for p in archive.glob("*" + ARCHIVED_SUFFIX)) == [
        name + ARCHIVED_SUFFIX for name in files
    ]
    [report] = current.read_reports()
    assert (report.mode, report.rows_written, report.counts["status"]) == (
        "relabel",
        60,
        {"ok": 52, "error": 8},
    )
    assert report.model.source == str(head) and report.lock_generation == 1
    assert f"    {report.run_id}: relabel, 60 rows, " in summary_text(output_stats(str(output)))
    count = f"select count(*) from read_parquet('{output}/**/*.parquet')"
    assert duckdb.sql(count).fetchall() == [(60,)]  # the archived files stay out of sight
    printed = capsys.readouterr().out
    assert (
        f"relabelled 52 rows with {head} in " in printed and "8 error rows carried over" in printed
    )


def test_a_reader_polling_during_relabel_always_sees_one_row_per_video(tmp_path, tiny):
    directory, sha256 = tiny
    output = generate(tmp_path / "out", sha256, rows_per_file=4, videos=400)
    reads: list[tuple[int, int, frozenset[str]]] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            table = ds.dataset(output, format="parquet").to_table(columns=["video_id", "label"])
            labels = frozenset(table["label"].drop_null().to_pylist())
            reads.append((table.num_rows, len(pc.unique(table["video_id"])), labels))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        assert relabel(output, directory / "head") == 0
    finally:
        done.set()
        reader.join()
    assert len(reads) >= 3
    assert all(read[:2] == (400, 400) for read in reads), [r[:2] for r in reads]
    mixed = [labels for *_, labels in reads if labels & set(CLASSES) and labels - set(CLASSES)]
    assert mixed  # some reads fell in the middle of the relabel: old and new labels together


def test_a_head_whose_backbone_did_not_compute_the_embeddings_is_exit_2(tmp_path, tiny, capsys):
    directory, _ = tiny
    make_checkpoint(tmp_path / "other", seed=1)
    output = generate(tmp_path / "out", fingerprint((tmp_path / "other" / "model.safetensors",)))
    files = {p: p.read_bytes() for p in output.rglob("*") if p.is_file()}

    assert relabel(output, directory / "head") == 2
    error = capsys.readouterr().err
    assert "its backbone did not compute this output's embeddings" in error
    assert "Train a head on this output with `vivit-batch train-head`" in error
    assert not (output / "_versions").exists() and not (output / "_runs").exists()
    assert {p: p.read_bytes() for p in files} == files


def test_review_and_relabel_load_neither_torch_nor_scikit_learn(tmp_path, tiny):
    """Commands that read an output (relabel: a matrix product per file) start without the
    model's libraries: a fresh interpreter runs them through the CLI, then lists what it
    imported of those."""
    directory, sha256 = tiny
    output, save = str(generate(tmp_path / "out", sha256)), str(tmp_path / "to-label.csv")
    script = (
        "import sys; from vivit_batch.cli import main; "
        f"assert main(['review', {output!r}, '--count', '3', '--save', {save!r}]) == 0; "
        f"assert main(['relabel', {output!r}, '--model', {str(directory / 'head')!r}]) == 0; "
        "print(sorted({'torch', 'sklearn', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_a_directory_train_head_did_not_make_is_exit_2(tmp_path, tiny, capsys):
    directory, sha256 = tiny
    output = generate(tmp_path / "out", sha256)
    assert relabel(output, directory / "base") == 2
    assert "relabel takes a head made by `vivit-batch train-head`" in capsys.readouterr().err


def test_a_file_s_previous_version_is_kept_once_when_an_interrupted_relabel_runs_again(
    tmp_path, tiny
):
    directory, sha256 = tiny
    output = Output(str(generate(tmp_path / "out", sha256, rows_per_file=100)))
    [path] = output.data_files()
    original = Path(path).read_bytes()
    archive = output.keep_identity(output.read_identity() or {}, Unlocked())
    output.replace_keeping(path, b"first attempt", archive, Unlocked())
    output.replace_keeping(path, b"second attempt", archive, Unlocked())
    assert Path(path).read_bytes() == b"second attempt"
    assert Path(output.archived_path(path, archive)).read_bytes() == original


def test_relabel_on_s3(tmp_path, tiny, s3_server, capsys):
    directory, sha256 = tiny
    local = generate(tmp_path / "out", sha256)
    s3 = s3_server.filesystem()
    s3.mkdir("heads")
    s3.put(f"{local}/", "heads/out/", recursive=True)
    endpoint = f"storage.endpoint_url={s3_server.endpoint_url}"
    assert relabel("s3://heads/out", directory / "head", "--set", endpoint) == 0, (
        capsys.readouterr().err
    )
    options = {"endpoint_url": s3_server.endpoint_url, "key": ACCESS_KEY, "secret": SECRET_KEY}
    output = Output("s3://heads/out", options)
    rows = output.dataset().to_table(columns=["status", "label"])
    assert rows.num_rows == 60
    assert set(rows.filter(pc.equal(rows["status"], "ok"))["label"].to_pylist()) <= set(CLASSES)
    [archive] = s3.ls("heads/out/_versions")
    assert len(s3.glob(f"{archive}/*{ARCHIVED_SUFFIX}")) == len(output.data_files())
    assert output.read_identity()["weights_sha256"] != sha256


def test_a_run_date_partitioned_output_keeps_its_folders(motion_output, motion_head, tmp_path):
    output = tmp_path / "out"
    settings = [*motion_output.settings, "decode.isolation=none", "output.partition_by=run_date"]
    label_in_process(
        load_config(
            None,
            settings,
            manifest_uri=str(motion_output.manifest),
            output_uri=str(output),
            model_source=str(CHECKPOINT_DIR),
        )
    )
    before = by_video(ds.dataset(output).to_table())
    files = sorted(p.relative_to(output) for p in output.rglob("*.parquet"))
    assert relabel(output, motion_head) == 0
    after = by_video(ds.dataset(output).to_table())
    assert after.schema == before.schema and after["run_date"].equals(before["run_date"])
    assert sorted(p.relative_to(output) for p in output.rglob("*.parquet")) == files
    [archive] = (output / "_versions").iterdir()
    kept = sorted(p.relative_to(archive) for p in archive.rglob("*" + ARCHIVED_SUFFIX))
    assert kept == [file.with_name(file.name + ARCHIVED_SUFFIX) for file in files]


def test_report_and_review_warn_of_a_relabel_stopped_midway(tmp_path, tiny, capsys):
    """The state a stopped relabel leaves (tests/e2e/test_relabel.py stops real ones)."""
    directory, sha256 = tiny
    output = generate(tmp_path / "out", sha256)
    written = Output(str(output))
    stopped = {RELABELLING: {"model": "/heads/mine", "run_id": "r1"}}
    written.write_identity({**(written.read_identity() or {}), **stopped}, Unlocked())
    said = f"output {output}: the relabel with /heads/mine (run r1) stopped midway"

    assert main(["review", str(output), "--count", "3", "--save", str(tmp_path / "r.csv")]) == 0
    assert said in capsys.readouterr().err
    stats = output_stats(str(output))
    assert f"  warning: {said}" in summary_text(stats)
    assert f"<p>warning: {said}" in html.unescape(render_html(stats))
