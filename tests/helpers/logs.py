"""What a log line of the job looks like."""

from __future__ import annotations

import re

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO|WARNING|ERROR) \S")
