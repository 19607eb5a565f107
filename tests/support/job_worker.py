"""Another pacsfhir process's job workers, for the tests of work shared across processes:

    python -m tests.support.job_worker DATABASE_URL COUNTER_FILE SECONDS

runs ``Jobs`` workers over that index with one handler, kind ``count``, that sleeps
SECONDS, appends a line to COUNTER_FILE and returns the payload's ``n`` doubled; it runs
until killed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pacsfhir.index.engine import create_index_engine
from pacsfhir.upstream.jobs import Jobs


def main() -> None:
    url, counter, seconds = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])

    def count(payload: dict[str, Any]) -> int:
        time.sleep(seconds)
        with counter.open("a") as out:
            out.write("ran\n")
        return int(payload["n"]) * 2

    jobs = Jobs(create_index_engine(url), {"count": count}, workers=2, poll_seconds=0.05)
    jobs.start()
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
