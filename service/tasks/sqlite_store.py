"""The embedded default: one SQLite file (``tasks.sqlite3`` under ``ELBO_SERVE_TASK_DIR``).

It outlives the server (unlike BentoML's task database, deleted at every start) and is safe
for every worker process of one machine: WAL journal, and each claim in a ``BEGIN
IMMEDIATE`` transaction, so two workers never take the same task. Calls run in a thread
(sqlite3 blocks), one short-lived connection each.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

from service.tasks.store import (
    CANCELED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    Claim,
    KeyReusedError,
    QueueFullError,
    Result,
    StoreConfig,
    TaskRecord,
    body_digest,
    error_text,
    exhausted_reason,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, client_key TEXT,
    body_sha TEXT NOT NULL, body BLOB NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, lease_until REAL,
    created_at REAL NOT NULL, executed_at REAL, completed_at REAL, expires_at REAL,
    error TEXT, done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0,
    result_status INTEGER, result BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_by_key ON tasks (owner, kind, client_key)
    WHERE client_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, created_at);
"""
RECORD_COLUMNS = (
    "task_id, kind, owner, status, attempts, created_at, executed_at, completed_at, error, "
    "done, total"
)


class SqliteStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        directory = Path(config.directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "tasks.sqlite3"
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    async def _run(self, function, *args):
        def call():
            connection = self._connect()
            try:
                return function(connection, *args)
            finally:
                connection.close()

        return await asyncio.to_thread(call)

    # Clients -------------------------------------------------------------------------------

    async def submit(self, kind: str, owner: str, body: bytes, key: str | None) -> TaskRecord:
        return await self._run(self._submit, kind, owner, body, key)

    def _submit(self, db, kind, owner, body, key) -> TaskRecord:
        digest = body_digest(body)
        db.execute("BEGIN IMMEDIATE")
        try:
            self._purge(db)
            if key is not None:
                row = db.execute(
                    "SELECT task_id, body_sha FROM tasks WHERE owner=? AND kind=? AND client_key=?",
                    (owner, kind, key),
                ).fetchone()
                if row is not None:
                    if row[1] != digest:
                        raise KeyReusedError(key)
                    db.execute("COMMIT")
                    return self._record(db, row[0])
            (queued,) = db.execute(
                "SELECT count(*) FROM tasks WHERE status=?", (QUEUED,)
            ).fetchone()
            if queued >= self.config.max_queued:
                raise QueueFullError(queued)
            task_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO tasks (task_id, kind, owner, client_key, body_sha, body, status, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (task_id, kind, owner, key, digest, body, QUEUED, time.time()),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self._record(db, task_id)

    def _record(self, db, task_id: str) -> TaskRecord | None:
        row = db.execute(f"SELECT {RECORD_COLUMNS} FROM tasks WHERE task_id=?", (task_id,))
        found = row.fetchone()
        return TaskRecord(*found) if found else None

    async def record(self, task_id: str) -> TaskRecord | None:
        return await self._run(self._record, task_id)

    async def result(self, task_id: str) -> Result | None:
        def read(db):
            row = db.execute(
                "SELECT result_status, result FROM tasks WHERE task_id=? AND result IS NOT NULL",
                (task_id,),
            ).fetchone()
            return Result(row[0], bytes(row[1])) if row else None

        return await self._run(read)

    async def cancel(self, task_id: str) -> TaskRecord | None:
        def cancel(db):
            now = time.time()
            db.execute(
                "UPDATE tasks SET status=?, worker=NULL, completed_at=?, expires_at=? "
                "WHERE task_id=? AND status IN (?, ?)",
                (CANCELED, now, now + self.config.retention_s, task_id, QUEUED, RUNNING),
            )
            return self._record(db, task_id)

        return await self._run(cancel)

    async def counts(self) -> dict[str, int]:
        def count(db):
            rows = db.execute(
                "SELECT status, count(*) FROM tasks WHERE status IN (?, ?) GROUP BY status",
                (QUEUED, RUNNING),
            )
            return {QUEUED: 0, RUNNING: 0} | dict(rows.fetchall())

        return await self._run(count)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    # Workers -------------------------------------------------------------------------------

    async def claim(self, worker: str) -> Claim | None:
        return await self._run(self._claim, worker)

    def _claim(self, db, worker: str) -> Claim | None:
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._purge(db)
            while True:
                row = db.execute(
                    "SELECT task_id, status, attempts FROM tasks WHERE status=? "
                    "OR (status=? AND lease_until < ?) ORDER BY created_at LIMIT 1",
                    (QUEUED, RUNNING, now),
                ).fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                task_id, status, attempts = row
                if status == RUNNING and attempts >= self.config.max_attempts:
                    reason = exhausted_reason(attempts, self.config.lease_s)
                    self._finish(db, task_id, FAILED, None, reason)
                    continue
                db.execute(
                    "UPDATE tasks SET status=?, attempts=attempts+1, worker=?, lease_until=?, "
                    "executed_at=coalesce(executed_at, ?) WHERE task_id=?",
                    (RUNNING, worker, now + self.config.lease_s, now, task_id),
                )
                (body,) = db.execute(
                    "SELECT body FROM tasks WHERE task_id=?", (task_id,)
                ).fetchone()
                db.execute("COMMIT")
                return Claim(self._record(db, task_id), bytes(body), status == RUNNING)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _finish(self, db, task_id: str, status: str, result: Result | None, error: str | None):
        now = time.time()
        db.execute(
            "UPDATE tasks SET status=?, worker=NULL, completed_at=?, expires_at=?, error=?, "
            "result_status=?, result=? WHERE task_id=?",
            (
                status,
                now,
                now + self.config.retention_s,
                error,
                result.status_code if result else None,
                result.body if result else None,
                task_id,
            ),
        )

    def _purge(self, db) -> None:
        db.execute("DELETE FROM tasks WHERE expires_at < ?", (time.time(),))

    async def renew(self, task_id: str, worker: str, done: int, total: int) -> bool:
        def renew(db):
            cursor = db.execute(
                "UPDATE tasks SET lease_until=?, done=?, total=? "
                "WHERE task_id=? AND worker=? AND status=?",
                (time.time() + self.config.lease_s, done, total, task_id, worker, RUNNING),
            )
            return cursor.rowcount == 1

        return await self._run(renew)

    async def complete(self, task_id: str, worker: str, result: Result) -> bool:
        def complete(db):
            db.execute("BEGIN IMMEDIATE")
            mine = db.execute(
                "SELECT 1 FROM tasks WHERE task_id=? AND worker=? AND status=?",
                (task_id, worker, RUNNING),
            ).fetchone()
            if mine:
                status = COMPLETED if result.status_code < 400 else FAILED
                error = None if status == COMPLETED else error_text(result)
                self._finish(db, task_id, status, result, error)
            db.execute("COMMIT")
            return bool(mine)

        return await self._run(complete)

    async def give_up(self, task_id: str, worker: str, reason: str) -> None:
        def give_up(db):
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT attempts FROM tasks WHERE task_id=? AND worker=? AND status=?",
                (task_id, worker, RUNNING),
            ).fetchone()
            if row and row[0] >= self.config.max_attempts:
                self._finish(db, task_id, FAILED, None, f"attempt {row[0]} failed: {reason}")
            elif row:
                db.execute(
                    "UPDATE tasks SET status=?, worker=NULL, error=? WHERE task_id=?",
                    (QUEUED, f"attempt {row[0]} failed: {reason}", task_id),
                )
            db.execute("COMMIT")

        await self._run(give_up)
