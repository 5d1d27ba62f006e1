"""Batches: many requests from a JSONL or CSV file (or Python dicts), priced offline, run in
parallel under a hard cost cap, each line idempotent so a killed batch resumes without paying
twice. `imagerouter batch` (cli/batch_cmd.py), `Router.batch` and `Router.abatch` use it.

- parse.py: reading and checking lines, and their idempotency keys;
- plan.py: the offline price plan (`--dry-run`);
- run.py: running lines, collecting what earlier runs paid for, the cost cap;
- report.py: the report file, one JSON object per line.
"""

from .parse import BatchFileError, BatchLine, LineProblem, parse_file, parse_requests
from .plan import BatchPlan, PlannedLine, plan_batch
from .report import ReportWriter
from .run import BatchOutcome, BatchProgress, CostCap, run_plan, run_requests

__all__ = [
    "BatchFileError",
    "BatchLine",
    "BatchOutcome",
    "BatchPlan",
    "BatchProgress",
    "CostCap",
    "LineProblem",
    "PlannedLine",
    "ReportWriter",
    "parse_file",
    "parse_requests",
    "plan_batch",
    "run_plan",
    "run_requests",
]
