"""Progress of long-running tasks, in files so that any worker can answer a status query.

A task's worker writes ``<task_id>.json`` = {"done", "total"}; writes are atomic (rename) and
throttled to whole percent steps, so a 1,000-step sampler writes at most ~100 times.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProgressStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, task_id: str) -> Path | None:
        # Task ids come from requests: never let one name a path outside our directory.
        if not _SAFE_ID.match(task_id) or task_id.startswith("."):
            return None
        return self.directory / f"{task_id}.json"

    def reporter(self, task_id: str):
        """A (done, total) callback that records progress for ``task_id``."""
        path = self._path(task_id)
        last_percent = -1

        def report(done: int, total: int) -> None:
            nonlocal last_percent
            percent = 100 * done // max(total, 1)
            if path is None or percent == last_percent:
                return
            last_percent = percent
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"done": done, "total": total}))
            tmp.replace(path)

        return report

    def read(self, task_id: str) -> tuple[int, int] | None:
        path = self._path(task_id)
        if path is None or not path.is_file():
            return None
        record = json.loads(path.read_text())
        return int(record["done"]), int(record["total"])
