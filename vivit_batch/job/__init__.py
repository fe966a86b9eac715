"""The labelling job on Ray: `prepare_job` checks everything that can be checked before any
work, `run_job` labels the manifest into the output and returns the run report.

    connect(address)                      # embedded local Ray, or join a cluster
    report = run_job(prepare_job(config))
"""

from vivit_batch.job.cluster import cluster_shape, connect
from vivit_batch.job.pipeline import first_rows, inference_options, label_on_cluster
from vivit_batch.job.prepare import PreparedJob, prepare_job, start_calibration
from vivit_batch.job.resources import ClusterShape, Resources, plan_resources
from vivit_batch.job.run import planned_resources, run_job

__all__ = [
    "ClusterShape",
    "PreparedJob",
    "Resources",
    "cluster_shape",
    "connect",
    "first_rows",
    "inference_options",
    "label_on_cluster",
    "plan_resources",
    "planned_resources",
    "prepare_job",
    "run_job",
    "start_calibration",
]
