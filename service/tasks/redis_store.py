"""Redis, shared by every replica: ``ELBO_SERVE_TASK_STORE=redis://HOST:PORT/DB``.

Built on Redis streams with a consumer group (redis-py), which give exactly the delivery the
tasks need without a protocol of our own: ``XADD`` queues a task, ``XREADGROUP`` hands each
entry to one replica and keeps it in the group's pending list until ``XACK``, and
``XAUTOCLAIM`` with a minimum idle time of the lease takes over an entry whose replica
stopped renewing it (``XCLAIM ... JUSTID`` resets the idle time: the lease renewal). We chose
this over arq or rq: both run jobs in worker processes of their own, with the job as a
pickled function call, where ours must run inside the BentoML worker that holds the models;
both would still leave cross-replica status, progress and idempotency to us.

A task's record, request and answer are one hash (``<prefix>task:<id>``), expiring
``retention_s`` after it finishes; an idempotency key is a key to the task id.
"""

from __future__ import annotations

import functools
import time
import uuid

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    StoreUnavailableError,
    TaskRecord,
    body_digest,
    error_text,
    exhausted_reason,
)

PREFIX = "elbo-serve:tasks:"
QUEUE = PREFIX + "queue"
GROUP = "replicas"


def _reachable(method):
    """Redis down or too slow -> StoreUnavailableError (the routes answer 503)."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise StoreUnavailableError(
                f"Redis at {self.config.url} is unreachable ({error})"
            ) from error

    return wrapper


def _task_key(task_id: str) -> str:
    return f"{PREFIX}task:{task_id}"


def _record(task_id: str, fields: dict[bytes, bytes]) -> TaskRecord:
    text = {key.decode(): value.decode() for key, value in fields.items() if key != b"body"
            and key != b"result"}  # fmt: skip

    def number(name):
        return float(text[name]) if text.get(name) else None

    return TaskRecord(
        task_id=task_id,
        kind=text["kind"],
        owner=text["owner"],
        status=text["status"],
        attempts=int(text.get("attempts", 0)),
        created_at=float(text["created_at"]),
        executed_at=number("executed_at"),
        completed_at=number("completed_at"),
        error=text.get("error") or None,
        done=int(text.get("done", 0)),
        total=int(text.get("total", 0)),
    )


class RedisStore:
    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        # Fail fast: a task route waits at most about a second for a Redis that is down.
        self.redis = aioredis.from_url(
            config.url,
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 1),
        )
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(QUEUE, GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._group_ready = True

    async def _queued(self) -> int:
        """Entries not yet delivered: the stream's length less the group's pending ones."""
        await self._ensure_group()
        length = await self.redis.xlen(QUEUE)
        pending = await self.redis.xpending(QUEUE, GROUP)
        return max(0, length - int(pending["pending"]))

    # Clients -------------------------------------------------------------------------------

    @_reachable
    async def submit(self, kind: str, owner: str, body: bytes, key: str | None) -> TaskRecord:
        digest = body_digest(body)
        task_id = uuid.uuid4().hex
        if key is not None:
            key_name = f"{PREFIX}key:{body_digest(f'{owner}|{kind}|{key}'.encode())}"
            if not await self.redis.set(
                key_name, task_id, nx=True, ex=int(self.config.retention_s)
            ):
                earlier = (await self.redis.get(key_name) or b"").decode()
                fields = await self.redis.hgetall(_task_key(earlier))
                if fields:
                    if fields[b"body_sha"].decode() != digest:
                        raise KeyReusedError(key)
                    return _record(earlier, fields)
                await self.redis.set(key_name, task_id, ex=int(self.config.retention_s))
        if (queued := await self._queued()) >= self.config.max_queued:
            raise QueueFullError(queued)
        fields = {
            "kind": kind, "owner": owner, "body": body, "body_sha": digest, "status": QUEUED,
            "attempts": 0, "created_at": time.time(), "done": 0, "total": 0,
        }  # fmt: skip
        await self._enqueue(task_id, fields)
        return await self.record(task_id)

    async def _enqueue(self, task_id: str, fields: dict) -> None:
        await self.redis.hset(_task_key(task_id), mapping=fields)
        entry = await self.redis.xadd(QUEUE, {"task_id": task_id})
        await self.redis.hset(_task_key(task_id), "entry", entry)

    @_reachable
    async def record(self, task_id: str) -> TaskRecord | None:
        fields = await self.redis.hgetall(_task_key(task_id))
        return _record(task_id, fields) if fields else None

    @_reachable
    async def result(self, task_id: str) -> Result | None:
        status, body = await self.redis.hmget(_task_key(task_id), "result_status", "result")
        return Result(int(status), body) if body is not None else None

    @_reachable
    async def cancel(self, task_id: str) -> TaskRecord | None:
        key = _task_key(task_id)
        status = await self.redis.hget(key, "status")
        if status in (QUEUED.encode(), RUNNING.encode()):
            await self._finish(task_id, CANCELED, None, None)
        return await self.record(task_id)

    @_reachable
    async def counts(self) -> dict[str, int]:
        await self._ensure_group()
        pending = int((await self.redis.xpending(QUEUE, GROUP))["pending"])
        return {QUEUED: await self._queued(), RUNNING: pending}

    @_reachable
    async def ping(self) -> None:
        await self.redis.ping()

    # Workers -------------------------------------------------------------------------------

    @_reachable
    async def claim(self, worker: str) -> Claim | None:
        await self._ensure_group()
        while True:
            try:
                taken = await self._take(worker)
            except ResponseError as error:
                if "NOGROUP" not in str(error):  # Redis restarted without its data
                    raise
                self._group_ready = False
                await self._ensure_group()
                continue
            if taken is None:
                return None
            claim = await self._start(worker, *taken)
            if claim is not None:
                return claim

    async def _take(self, worker: str) -> tuple[bytes, str, bool] | None:
        """(entry id, task id, taken over?) of a lapsed lease, else of a new entry."""
        lease_ms = int(self.config.lease_s * 1000)
        _, lapsed, *_ = await self.redis.xautoclaim(QUEUE, GROUP, worker, lease_ms, "0-0", count=1)
        if lapsed:
            entry, fields = lapsed[0]
            return entry, fields[b"task_id"].decode(), True
        new = await self.redis.xreadgroup(GROUP, worker, {QUEUE: ">"}, count=1)
        if not new or not new[0][1]:
            return None
        entry, fields = new[0][1][0]
        return entry, fields[b"task_id"].decode(), False

    async def _start(self, worker: str, entry: bytes, task_id: str, taken_over: bool):
        key = _task_key(task_id)
        fields = await self.redis.hgetall(key)
        status = fields.get(b"status", b"").decode()
        if status not in (QUEUED, RUNNING) or fields.get(b"entry") != entry:
            await self._drop(entry)  # canceled, expired or queued again under a new entry
            return None
        attempts = int(fields[b"attempts"])
        if taken_over and attempts >= self.config.max_attempts:
            await self._finish(
                task_id, FAILED, None, exhausted_reason(attempts, self.config.lease_s)
            )
            return None
        now = time.time()
        update = {"status": RUNNING, "worker": worker, "attempts": attempts + 1}
        if not fields.get(b"executed_at"):
            update["executed_at"] = now
        await self.redis.hset(key, mapping=update)
        record = _record(task_id, fields | {k.encode(): str(v).encode() for k, v in update.items()})
        return Claim(record, fields[b"body"], taken_over and status == RUNNING)

    async def _drop(self, entry: bytes) -> None:
        await self.redis.xack(QUEUE, GROUP, entry)
        await self.redis.xdel(QUEUE, entry)

    async def _mine(self, task_id: str, worker: str) -> dict[bytes, bytes] | None:
        fields = await self.redis.hgetall(_task_key(task_id))
        if fields.get(b"status") == RUNNING.encode() and fields.get(b"worker") == worker.encode():
            return fields
        return None

    async def _finish(self, task_id: str, status: str, result: Result | None, error: str | None):
        key = _task_key(task_id)
        update = {"status": status, "worker": "", "completed_at": time.time(), "error": error or ""}
        if result is not None:
            update |= {"result_status": result.status_code, "result": result.body}
        await self.redis.hset(key, mapping=update)
        await self.redis.expire(key, int(self.config.retention_s))
        if entry := await self.redis.hget(key, "entry"):
            await self._drop(entry)

    @_reachable
    async def renew(self, task_id: str, worker: str, done: int, total: int) -> bool:
        fields = await self._mine(task_id, worker)
        if fields is None:
            return False
        await self.redis.xclaim(QUEUE, GROUP, worker, 0, [fields[b"entry"]], justid=True)
        await self.redis.hset(_task_key(task_id), mapping={"done": done, "total": total})
        return True

    @_reachable
    async def complete(self, task_id: str, worker: str, result: Result) -> bool:
        fields = await self._mine(task_id, worker)
        if fields is None:
            return False
        status = COMPLETED if result.status_code < 400 else FAILED
        await self._finish(
            task_id, status, result, None if status == COMPLETED else error_text(result)
        )
        return True

    @_reachable
    async def give_up(self, task_id: str, worker: str, reason: str) -> None:
        fields = await self._mine(task_id, worker)
        if fields is None:
            return
        attempts = int(fields[b"attempts"])
        error = f"attempt {attempts} failed: {reason}"
        if attempts >= self.config.max_attempts:
            await self._finish(task_id, FAILED, None, error)
            return
        await self._drop(fields[b"entry"])
        await self.redis.hset(
            _task_key(task_id), mapping={"status": QUEUED, "worker": "", "error": error}
        )
        entry = await self.redis.xadd(QUEUE, {"task_id": task_id})
        await self.redis.hset(_task_key(task_id), "entry", entry)
