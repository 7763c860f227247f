import asyncio

import pytest

from service.batching import KeyedBatcher


def _recording_batcher(max_items: int = 8):
    calls: list[tuple[str, list[int]]] = []
    observed: list[tuple[str, int]] = []
    batcher = KeyedBatcher(max_items, wait_s=0.01, on_batch=lambda k, n, s: observed.append((k, n)))

    def run_for(key):
        def run(items):
            calls.append((key, list(items)))
            return [item * 10 for item in items]

        return run

    return batcher, calls, observed, run_for


def test_concurrent_items_with_one_key_share_one_call():
    batcher, calls, observed, run_for = _recording_batcher()

    async def main():
        return await asyncio.gather(*(batcher.submit("a", run_for("a"), i) for i in range(5)))

    assert asyncio.run(main()) == [0, 10, 20, 30, 40]
    assert calls == [("a", [0, 1, 2, 3, 4])]
    assert observed == [("a", 5)]


def test_different_keys_never_share_a_call():
    batcher, calls, _, run_for = _recording_batcher()

    async def main():
        jobs = [batcher.submit(key, run_for(key), i) for i, key in enumerate("abab")]
        return await asyncio.gather(*jobs)

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert sorted(calls) == [("a", [0, 2]), ("b", [1, 3])]


def test_batches_respect_the_item_budget_and_keep_order():
    batcher, calls, _, run_for = _recording_batcher(max_items=4)

    async def main():
        sizes = [3, 2, 2, 5]  # 3 | 2+2 | 5 (too big for any batch: runs alone)
        jobs = [batcher.submit("a", run_for("a"), i, size) for i, size in enumerate(sizes)]
        return await asyncio.gather(*jobs)

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert [items for _, items in calls] == [[0], [1, 2], [3]]


def test_items_arriving_while_the_model_is_busy_form_the_next_batch():
    batcher = KeyedBatcher(64, wait_s=0.0)
    calls = []

    def slow(items):
        calls.append(list(items))
        import time

        time.sleep(0.2)
        return items

    async def main():
        first = asyncio.ensure_future(batcher.submit("a", slow, 0))
        await asyncio.sleep(0.05)  # the first call is running now
        rest = [batcher.submit("a", slow, i) for i in range(1, 6)]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]
    assert calls == [[0], [1, 2, 3, 4, 5]]


def test_a_failing_call_fails_every_item_in_it_and_the_batcher_goes_on():
    batcher = KeyedBatcher(8, wait_s=0.01)

    def broken(items):
        raise RuntimeError("boom")

    async def main():
        results = await asyncio.gather(
            *(batcher.submit("a", broken, i) for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        return await batcher.submit("a", lambda items: items, 7)

    assert asyncio.run(main()) == 7


def test_an_exception_returned_for_one_item_fails_that_item_alone():
    batcher, calls, _, _ = _recording_batcher()

    def run(items):
        calls.append(("a", list(items)))
        return [ValueError(f"item {i} came out non-finite") if i == 1 else i for i in items]

    async def main():
        submitted = [asyncio.ensure_future(batcher.submit("a", run, i)) for i in range(3)]
        await asyncio.wait(submitted)
        return submitted

    first, second, third = asyncio.run(main())
    assert calls == [("a", [0, 1, 2])]  # one shared call
    assert (first.result(), third.result()) == (0, 2)
    with pytest.raises(ValueError, match="item 1"):
        second.result()


@pytest.mark.parametrize("wait_s", [0.0, 0.01])
def test_no_item_is_ever_dropped_under_load(wait_s):
    batcher = KeyedBatcher(4, wait_s=wait_s)

    async def main():
        return await asyncio.gather(*(batcher.submit(i % 3, lambda xs: xs, i) for i in range(200)))

    assert asyncio.run(main()) == list(range(200))


def _peak_concurrent_calls(lanes: int, keys: str) -> int:
    """Most model calls seen running at once when items of ``keys`` arrive together."""
    import threading
    import time

    batcher = KeyedBatcher(64, wait_s=0.0, lanes=lanes)
    lock, running, peak = threading.Lock(), [0], [0]

    def slow(items):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1
        return items

    async def main():
        return await asyncio.gather(*(batcher.submit(key, slow, i) for i, key in enumerate(keys)))

    assert asyncio.run(main()) == list(range(len(keys)))
    return peak[0]


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_at_most_lanes_model_calls_run_at_once(lanes):
    assert _peak_concurrent_calls(lanes, "abcdef") == lanes


def test_lanes_must_be_positive():
    with pytest.raises(ValueError, match="lanes"):
        KeyedBatcher(4, lanes=0)


def test_items_arriving_together_are_shared_out_over_idle_lanes():
    calls = []

    def slow(items):
        import time

        calls.append(len(items))
        time.sleep(0.1)
        return items

    async def main():
        batcher = KeyedBatcher(64, wait_s=0.01, lanes=2)
        return await asyncio.gather(*(batcher.submit("a", slow, i) for i in range(32)))

    assert asyncio.run(main()) == list(range(32))
    assert sorted(calls) == [16, 16]


def test_one_lane_takes_everything_queued():
    calls = []

    async def main():
        batcher = KeyedBatcher(64, wait_s=0.01, lanes=1)
        jobs = (batcher.submit("a", lambda xs: calls.append(len(xs)) or xs, i) for i in range(32))
        return await asyncio.gather(*jobs)

    assert asyncio.run(main()) == list(range(32))
    assert calls == [32]


def test_a_lone_item_on_an_idle_batcher_does_not_wait_for_companions():
    batcher = KeyedBatcher(8, wait_s=30.0)

    async def main():
        return await asyncio.wait_for(batcher.submit("a", lambda xs: xs, 1), timeout=5.0)

    assert asyncio.run(main()) == 1


def test_an_item_arriving_while_another_runs_waits_for_companions():
    import threading

    batcher = KeyedBatcher(8, wait_s=30.0, lanes=2)
    release = threading.Event()
    calls = []

    def blocking(items):
        release.wait(10)
        return items

    async def main():
        running = asyncio.ensure_future(batcher.submit("a", blocking, 0))
        await asyncio.sleep(0.05)  # the first item is in a lane now
        waiting = asyncio.ensure_future(batcher.submit("b", lambda xs: calls.append(xs) or xs, 1))
        await asyncio.sleep(0.2)
        assert calls == []  # a lane is free, yet b waits wait_s for companions
        release.set()
        await running
        waiting.cancel()

    asyncio.run(main())


# Long work and short work ---------------------------------------------------------------


def _expensive(started, finish, stopped=None, deadline_s: float = 10.0):
    """A progressive run: one slice every 10 ms until ``finish`` is set (or the deadline, so
    that a batcher that cannot pause it fails the test instead of hanging it)."""
    import time

    def run(items):
        started.release()
        stop_at = time.monotonic() + deadline_s
        try:
            while not finish.wait(0.01) and time.monotonic() < stop_at:
                yield
        finally:
            if stopped is not None:
                stopped.set()
        return [f"done {item}" for item in items]

    return run


@pytest.mark.parametrize("lanes", [1, 2])
def test_a_cheap_item_completes_while_expensive_work_holds_every_lane(lanes):
    import threading

    batcher = KeyedBatcher(8, wait_s=0.0, lanes=lanes)
    started, finish = threading.Semaphore(0), threading.Event()
    expensive = _expensive(started, finish)

    async def main():
        heavy = [
            # (cost defaults to size: 8 images cost more than the cheap item's 1)
            asyncio.ensure_future(batcher.submit(f"heavy {i}", expensive, i, size=8))
            for i in range(lanes)
        ]
        for _ in range(lanes):  # every lane is inside an expensive call now
            assert await asyncio.to_thread(started.acquire, timeout=5)
        cheap = await asyncio.wait_for(batcher.submit("cheap", lambda xs: xs, "c"), 5)
        running = [not job.done() for job in heavy]
        finish.set()
        return cheap, running, await asyncio.wait_for(asyncio.gather(*heavy), 15)

    cheap, running, heavy = asyncio.run(main())
    assert cheap == "c"
    assert running == [True] * lanes  # the cheap item did not wait for them to finish
    assert heavy == [f"done {i}" for i in range(lanes)]


def test_a_free_lane_goes_to_the_cheapest_waiting_batch():
    import threading

    batcher = KeyedBatcher(8, wait_s=0.0, lanes=1)
    release, order = threading.Event(), []

    def blocking(items):
        release.wait(5)
        return items

    def record(items):
        order.extend(items)
        return items

    async def main():
        first = asyncio.ensure_future(batcher.submit("block", blocking, 0))
        await asyncio.sleep(0.05)  # the only lane is busy
        queued = [
            asyncio.ensure_future(batcher.submit("dear", record, "dear", cost=100.0)),
            asyncio.ensure_future(batcher.submit("cheap", record, "cheap", cost=1.0)),
            asyncio.ensure_future(batcher.submit("middle", record, "middle", cost=10.0)),
        ]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *queued), 5)

    asyncio.run(main())
    assert order == ["cheap", "middle", "dear"]


def test_expensive_work_keeps_its_lane_when_nothing_cheaper_waits():
    """Two equal long batches on one lane run one after the other, not interleaved."""
    calls = []

    def long(items):
        for step in range(3):
            calls.append((items[0], step))
            yield
        return items

    async def main():
        batcher = KeyedBatcher(8, wait_s=0.0, lanes=1)
        jobs = [batcher.submit(key, long, key, cost=5.0) for key in "ab"]
        return await asyncio.wait_for(asyncio.gather(*jobs), 5)

    assert asyncio.run(main()) == ["a", "b"]
    assert calls == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]


def test_progressive_work_reports_its_results_and_time_in_the_lane_once():
    observed = []

    def progressive(items):
        yield
        yield
        return [item * 2 for item in items]

    async def main():
        batcher = KeyedBatcher(8, wait_s=0.01, on_batch=lambda k, n, s: observed.append((k, n)))
        jobs = (batcher.submit("p", progressive, i) for i in range(3))
        return await asyncio.wait_for(asyncio.gather(*jobs), 5)

    assert asyncio.run(main()) == [0, 2, 4]
    assert observed == [("p", 3)]


def test_progressive_work_stops_when_every_request_went_away_and_says_so():
    import threading

    started, finish, stopped = threading.Semaphore(0), threading.Event(), threading.Event()
    executed, stops = [], []

    async def main():
        batcher = KeyedBatcher(
            8,
            wait_s=0.0,
            lanes=1,
            on_batch=lambda key, items, seconds: executed.append(key),
            on_stop=lambda key, items, seconds: stops.append((key, items)),
        )
        job = asyncio.ensure_future(
            batcher.submit("heavy", _expensive(started, finish, stopped), 0, cost=1000.0)
        )
        assert await asyncio.to_thread(started.acquire, timeout=5)
        job.cancel()  # the client went away
        assert await asyncio.to_thread(stopped.wait, 5)
        # and the lane is free again
        return await asyncio.wait_for(batcher.submit("next", lambda xs: xs, 1), 5)

    assert asyncio.run(main()) == 1
    assert not finish.is_set()
    assert stops == [("heavy", 1)]
    assert executed == ["next"]  # the stopped call is no executed batch


def test_a_failing_slice_fails_every_item_of_its_batch():
    def failing(items):
        yield
        raise RuntimeError("boom in a slice")

    async def main():
        batcher = KeyedBatcher(8, wait_s=0.01)
        jobs = (batcher.submit("f", failing, i) for i in range(2))
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 5)
        assert all(isinstance(r, RuntimeError) for r in results)
        return await batcher.submit("f", lambda xs: xs, 3)

    assert asyncio.run(main()) == 3
