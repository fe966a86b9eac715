"""The output dataset and its protocol: layout, identity, committed rows, rows replaced in place,
versions, run reports, the lock, and the Parquet sink. `Output` is the one object that writes
there."""

from vivit_batch.output.dataset import ARCHIVED_SUFFIX, Output, Unlocked
from vivit_batch.output.lock import OutputLock
from vivit_batch.output.runs import (
    ErrorBudget,
    ModelUsed,
    RunReport,
    Throughput,
    WriteStats,
    new_run_id,
)
from vivit_batch.output.schema import RESERVED_COLUMNS, output_schema
from vivit_batch.output.sink import FileWriter, commit_staged
from vivit_batch.output.writer import RunWriter

__all__ = [
    "ARCHIVED_SUFFIX",
    "RESERVED_COLUMNS",
    "ErrorBudget",
    "FileWriter",
    "ModelUsed",
    "Output",
    "OutputLock",
    "RunReport",
    "RunWriter",
    "Throughput",
    "Unlocked",
    "WriteStats",
    "commit_staged",
    "new_run_id",
    "output_schema",
]
