"""The task stores' semantics (docs/tasks.md), the same tests for the SQLite default and a
real redis-server: two "replicas" are two store objects (each its own connection), as two
processes would hold."""

from __future__ import annotations

import asyncio
import time

import pytest

from load_tests.redis_server import running_redis
from service.tasks.redis_store import RedisStore
from service.tasks.sqlite_store import SqliteStore
from service.tasks.store import (
    CANCELED,
    COMPLETED,
    FAILED,
    QUEUED,
    RUNNING,
    KeyReusedError,
    QueueFullError,
    Result,
    StoreConfig,
    StoreUnavailableError,
)

LEASE_S = 0.3


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(params=["sqlite", "redis"])
def stores(request, tmp_path):
    """Two replicas' views of one fresh store, and the config they share."""

    def make(**overrides):
        if request.param == "sqlite":
            config = StoreConfig("", str(tmp_path), lease_s=LEASE_S, **overrides)
            return SqliteStore(config), SqliteStore(config)
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        config = StoreConfig(url, str(tmp_path), lease_s=LEASE_S, **overrides)
        return RedisStore(config), RedisStore(config)

    return make


def run(coroutine):
    return asyncio.run(coroutine)


def test_any_replica_reads_a_task_and_whoever_claims_it_answers_it(stores):
    async def scenario():
        a, b = stores()
        submitted = await a.submit("sample_task", "", b'{"n": 1}', None)
        assert (await b.record(submitted.task_id)).status == QUEUED
        claim = await b.claim("b")
        assert claim.record.task_id == submitted.task_id and claim.body == b'{"n": 1}'
        assert await a.claim("a") is None  # one claim per task
        assert (await a.counts()) == {QUEUED: 0, RUNNING: 1}
        assert await b.renew(submitted.task_id, "b", 3, 5)
        assert (await a.record(submitted.task_id)).done == 3
        assert await b.complete(submitted.task_id, "b", Result(200, b'{"ok": 1}'))
        record = await a.record(submitted.task_id)
        assert record.status == COMPLETED and record.attempts == 1
        assert await a.result(submitted.task_id) == Result(200, b'{"ok": 1}')
        assert (await a.counts()) == {QUEUED: 0, RUNNING: 0}

    run(scenario())


def test_a_lapsed_lease_is_taken_over_and_only_the_holder_answers(stores):
    async def scenario():
        a, b = stores()
        task_id = (await a.submit("sample_task", "", b"{}", None)).task_id
        await a.claim("a")
        assert await b.claim("b") is None  # the lease holds
        await asyncio.sleep(LEASE_S * 2)
        claim = await b.claim("b")
        assert claim.record.task_id == task_id and claim.lease_expired
        assert claim.record.attempts == 2
        assert not await a.renew(task_id, "a", 1, 2)  # a learns it lost the task
        assert not await a.complete(task_id, "a", Result(200, b"late"))
        assert await b.complete(task_id, "b", Result(200, b"kept"))
        assert (await a.result(task_id)).body == b"kept"

    run(scenario())


def test_a_task_whose_runs_keep_dying_fails_with_the_reason(stores):
    async def scenario():
        a, _ = stores(max_attempts=2)
        task_id = (await a.submit("likelihood_task", "", b"{}", None)).task_id
        for _ in range(2):
            assert (await a.claim("a")).record.task_id == task_id
            await asyncio.sleep(LEASE_S * 2)
        assert await a.claim("a") is None
        record = await a.record(task_id)
        assert record.status == FAILED and "gave up after 2 attempts" in record.error

    run(scenario())


def test_a_failed_attempt_is_queued_again_then_failed_with_its_reason(stores):
    async def scenario():
        a, b = stores(max_attempts=2)
        task_id = (await a.submit("sample_task", "", b"{}", None)).task_id
        await a.claim("a")
        await a.give_up(task_id, "a", "RuntimeError('boom')")
        assert (await a.record(task_id)).status == QUEUED
        await b.claim("b")
        await b.give_up(task_id, "b", "RuntimeError('boom')")
        record = await a.record(task_id)
        assert record.status == FAILED and record.error == "attempt 2 failed: RuntimeError('boom')"

    run(scenario())


def test_a_client_error_answer_is_final_and_failed(stores):
    async def scenario():
        a, _ = stores()
        task_id = (await a.submit("sample_task", "", b"{}", None)).task_id
        await a.claim("a")
        await a.complete(task_id, "a", Result(400, b'{"error": "images[0]: not a PNG"}'))
        record = await a.record(task_id)
        assert record.status == FAILED and record.error == "images[0]: not a PNG"
        assert (await a.result(task_id)).status_code == 400

    run(scenario())


def test_cancel_from_another_replica_stops_the_runner_and_the_queue(stores):
    async def scenario():
        a, b = stores()
        running = (await a.submit("sample_task", "", b"{}", None)).task_id
        queued = (await a.submit("sample_task", "", b"{}", None)).task_id
        await a.claim("a")
        assert (await b.cancel(running)).status == CANCELED
        assert (await b.cancel(queued)).status == CANCELED
        assert not await a.renew(running, "a", 1, 2)
        assert await a.claim("a") is None
        assert (await a.counts()) == {QUEUED: 0, RUNNING: 0}

    run(scenario())


def test_a_key_sent_again_returns_the_same_task_and_a_reused_key_is_refused(stores):
    async def scenario():
        a, b = stores()
        first = await a.submit("sample_task", "me", b"{}", "k1")
        assert (await b.submit("sample_task", "me", b"{}", "k1")).task_id == first.task_id
        other_owner = await b.submit("sample_task", "you", b"{}", "k1")
        assert other_owner.task_id != first.task_id
        with pytest.raises(KeyReusedError):
            await b.submit("sample_task", "me", b'{"n": 2}', "k1")

    run(scenario())


def test_a_full_queue_refuses_new_tasks(stores):
    async def scenario():
        a, _ = stores(max_queued=2)
        for _ in range(2):
            await a.submit("sample_task", "", b"{}", None)
        with pytest.raises(QueueFullError):
            await a.submit("sample_task", "", b"{}", None)
        await a.claim("a")  # one leaves the queue: room again
        await a.submit("sample_task", "", b"{}", None)

    run(scenario())


def test_finished_tasks_are_kept_for_the_retention_then_dropped(stores):
    async def scenario():
        a, _ = stores(retention_s=1)
        task_id = (await a.submit("sample_task", "", b"{}", None)).task_id
        await a.claim("a")
        await a.complete(task_id, "a", Result(200, b"{}"))
        assert (await a.record(task_id)).status == COMPLETED
        await asyncio.sleep(2.1)
        await a.claim("a")  # SQLite purges as it claims; Redis expires on its own
        assert await a.record(task_id) is None

    run(scenario())


def test_an_unreachable_redis_is_store_unavailable(tmp_path):
    from load_tests.serving import free_port

    store = RedisStore(StoreConfig(f"redis://127.0.0.1:{free_port()}/0", str(tmp_path)))
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        run(store.submit("sample_task", "", b"{}", None))
    assert time.monotonic() - start < 5
