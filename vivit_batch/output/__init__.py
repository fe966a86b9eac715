"""The output dataset and its protocol: layout, identity, committed rows, rows replaced in place,
versions, run reports, the lock, the Parquet sink, and compaction. `Output` is the one object
that writes there. Other modules import from here; `schema` (the columns) is the one submodule
they use directly, as a leaf."""

from vivit_batch.output.compaction import compact_output, compaction_summary
from vivit_batch.output.dataset import (
    ARCHIVED_SUFFIX,
    RELABELLING,
    Fence,
    Output,
    Unlocked,
    parquet_bytes,
    require_relabel_finished,
    unfinished_relabel,
)
from vivit_batch.output.lock import OutputLock
from vivit_batch.output.lock_state import lock_state
from vivit_batch.output.reading import check_truth_column, first_per_video, manifest_columns
from vivit_batch.output.replacing import Relabelled
from vivit_batch.output.runs import (
    RELABEL_MODE,
    ErrorBudget,
    ModelUsed,
    RunReport,
    Throughput,
    WriteStats,
    new_run_id,
)
from vivit_batch.output.schema import RESERVED_COLUMNS, output_schema
from vivit_batch.output.sink import FileWriter, commit_staged, file_rows
from vivit_batch.output.videos import WholeVideos
from vivit_batch.output.writer import RunWriter

__all__ = [
    "ARCHIVED_SUFFIX",
    "RELABELLING",
    "RELABEL_MODE",
    "RESERVED_COLUMNS",
    "ErrorBudget",
    "Fence",
    "FileWriter",
    "ModelUsed",
    "Output",
    "OutputLock",
    "Relabelled",
    "RunReport",
    "RunWriter",
    "Throughput",
    "Unlocked",
    "WholeVideos",
    "WriteStats",
    "check_truth_column",
    "commit_staged",
    "compact_output",
    "compaction_summary",
    "file_rows",
    "first_per_video",
    "lock_state",
    "manifest_columns",
    "new_run_id",
    "output_schema",
    "parquet_bytes",
    "require_relabel_finished",
    "unfinished_relabel",
]
