"""Entry point for `ray job submit`: the same arguments as `vivit-batch run`.

    ray job submit --working-dir . -- python jobs/label_videos.py \
        --manifest s3://bucket/videos.csv --output s3://bucket/labels/ --model ./checkpoint

Inside a Ray job RAY_ADDRESS is set, so the job joins the cluster it was submitted to.
"""

import sys
from pathlib import Path

# The uploaded working directory holds the package; the entrypoint runs from `jobs/`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vivit_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
