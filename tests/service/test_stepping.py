"""The step scheduler: requests of one model share every network call whatever their step
counts, join between steps, leave the moment they are done (or cancelled), within the batch
budget, and none starves."""

import asyncio
import time

import pytest
import torch

from service.batching import Lanes
from service.stepping import StepScheduler


class CountingRows:
    """A request of ``size`` rows that takes ``total`` calls; its rows hold its id."""

    def __init__(self, ident: int, size: int, total: int) -> None:
        self.ident, self.rows, self.total, self.done = ident, size, total, 0

    def network_input(self):
        return (torch.full((self.rows, 1), float(self.ident)),)

    def advance(self, output):
        assert torch.all(output == self.ident + 1000), "a row got another request's output"
        self.done += 1

    def result(self):
        return self.ident


class RecordingNetwork:
    """Adds 1000 to every row; records the request ids of each call's rows."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.seconds = seconds

    def __call__(self, x):
        if self.seconds:
            time.sleep(self.seconds)
        self.calls.append(x[:, 0].int().tolist())
        return x + 1000


def _scheduler(lanes=1, max_items=64, age_s=2.0, **options):
    return StepScheduler(Lanes(lanes), max_items, age_s, **options)


def _submit(scheduler, network, ident, total, size=1, cost=None, finish=None):
    return scheduler.submit(
        "m",
        network,
        lambda: CountingRows(ident, size, total),
        finish or (lambda result: result * 10),
        size,
        float(total * size) if cost is None else cost,
    )


def test_requests_with_different_step_counts_share_every_call():
    async def main():
        scheduler, network = _scheduler(), RecordingNetwork()
        results = await asyncio.gather(
            *(_submit(scheduler, network, i, total) for i, total in enumerate([3, 5, 8]))
        )
        return results, network.calls

    results, calls = asyncio.run(main())
    assert results == [0, 10, 20]
    assert len(calls) == 8  # the longest request's steps, not 3 + 5 + 8
    assert [sorted(set(c)) for c in calls] == [[0, 1, 2]] * 3 + [[1, 2]] * 2 + [[2]] * 3


def test_a_request_arriving_mid_flight_joins_at_the_next_step_and_never_waits_for_the_rest():
    async def main():
        scheduler, network = _scheduler(), RecordingNetwork(seconds=0.002)
        long = asyncio.ensure_future(_submit(scheduler, network, 0, 200))
        while len(network.calls) < 5:
            await asyncio.sleep(0.001)
        submitted_at = len(network.calls)
        await _submit(scheduler, network, 1, 4)
        answered_at = len(network.calls)
        assert not long.done()
        await long
        return submitted_at, answered_at, network.calls

    submitted_at, answered_at, calls = asyncio.run(main())
    assert answered_at - submitted_at <= 4 + 1  # its own 4 steps, after at most the call in flight
    assert sum(1 in c for c in calls) == 4 and len(calls) == 200


def test_no_call_carries_more_rows_than_the_budget_and_every_request_is_answered():
    async def main():
        scheduler, network = _scheduler(max_items=4), RecordingNetwork()
        jobs = [_submit(scheduler, network, i, 3 + i % 4, size=2) for i in range(7)]
        results = await asyncio.gather(*jobs)
        return results, network.calls

    results, calls = asyncio.run(main())
    assert results == [10 * i for i in range(7)]
    assert max(len(c) for c in calls) <= 4


def test_a_request_larger_than_the_budget_runs_alone():
    async def main():
        scheduler, network = _scheduler(max_items=4), RecordingNetwork()
        return await _submit(scheduler, network, 5, 2, size=9), network.calls

    result, calls = asyncio.run(main())
    assert result == 50 and [len(c) for c in calls] == [9, 9]


def test_a_short_request_beside_long_ones_runs_in_small_calls_within_the_call_budget():
    async def main():
        scheduler, network = _scheduler(call_rows=8), RecordingNetwork(seconds=0.001)
        longs = [asyncio.ensure_future(_submit(scheduler, network, i, 40, size=8)) for i in (1, 2)]
        while len(network.calls) < 3:
            await asyncio.sleep(0.001)
        await _submit(scheduler, network, 0, 5)
        short_calls = [c for c in network.calls if 0 in c]
        await asyncio.gather(*longs)
        return short_calls, network.calls

    short_calls, calls = asyncio.run(main())
    assert max(len(c) for c in calls) <= 8
    assert short_calls == [[0]] * 5  # the cheapest to finish first, alone: no long rows to wait for
    assert sum(1 in c for c in calls) == 40 and sum(2 in c for c in calls) == 40


def test_a_long_request_taking_its_aged_step_does_not_hold_the_short_one_back():
    async def main():
        scheduler = _scheduler(call_rows=8, age_s=0.01)
        network = RecordingNetwork(seconds=0.004)
        longs = [asyncio.ensure_future(_submit(scheduler, network, i, 60, size=8)) for i in (1, 2)]
        while len(network.calls) < 3:
            await asyncio.sleep(0.001)
        await _submit(scheduler, network, 0, 20)
        await asyncio.gather(*longs)
        return network.calls

    calls = asyncio.run(main())
    with_short = [i for i, call in enumerate(calls) if 0 in call]
    assert len(with_short) == 20
    # Every call from its first step to its last advanced it: an aged long request took its
    # steps beside it, each in a budget of its own, never instead of it.
    assert with_short == list(range(with_short[0], with_short[0] + 20))
    assert any(1 in calls[i] or 2 in calls[i] for i in with_short)
    assert max(len(c) for c in calls) <= 8 + 8
    assert sum(1 in c for c in calls) == 60 and sum(2 in c for c in calls) == 60


def _starving_load(age_s: float) -> tuple[bool, int]:
    """One expensive request behind a continuous stream of cheap ones, one row per call:
    (whether it was answered while the stream ran, the cheap requests answered)."""

    async def main():
        scheduler, network = _scheduler(max_items=1, age_s=age_s), RecordingNetwork(0.001)
        answered = 0

        async def cheap(i):
            nonlocal answered
            await _submit(scheduler, network, 100 + i, 1)
            answered += 1

        stream = [asyncio.ensure_future(cheap(i)) for i in range(3)]
        await asyncio.sleep(0.005)
        expensive = asyncio.ensure_future(_submit(scheduler, network, 0, 3))
        for i in range(3, 150, 3):  # cheap work arrives faster than one row per call serves it
            stream += [asyncio.ensure_future(cheap(i + j)) for j in range(3)]
            await asyncio.sleep(0.002)
        served = expensive.done()
        await asyncio.gather(*stream, expensive)
        return served, answered

    return asyncio.run(main())


def test_admission_ages_so_long_work_is_not_starved_by_a_stream_of_cheap_work():
    served, _ = _starving_load(age_s=0.05)
    assert served
    # Without ageing (strict cheapest first) the same load starves it: the test can fail.
    starved, _ = _starving_load(age_s=1e9)
    assert not starved


def test_a_cancelled_request_leaves_at_the_next_step_and_its_companions_go_on():
    stopped = []

    async def main():
        scheduler = _scheduler(on_stop=lambda m, rows, s: stopped.append(rows))
        network = RecordingNetwork(seconds=0.002)
        gone = asyncio.ensure_future(_submit(scheduler, network, 0, 1000))
        stays = asyncio.ensure_future(_submit(scheduler, network, 1, 30))
        while len(network.calls) < 3:
            await asyncio.sleep(0.001)
        gone.cancel()
        assert await stays == 10
        return network.calls

    calls = asyncio.run(main())
    assert stopped == [1]
    assert sum(0 in c for c in calls) <= 5 and len(calls) == 30


def test_a_failing_call_fails_its_requests_and_an_answer_that_fails_fails_only_its_own():
    def broken(x):
        raise RuntimeError("network broke")

    async def main():
        scheduler = _scheduler()
        with pytest.raises(RuntimeError, match="network broke"):
            await _submit(scheduler, broken, 0, 2)

        def refuse(result):
            raise ValueError("bad rows")

        network = RecordingNetwork()
        bad = _submit(scheduler, network, 1, 2, finish=refuse)
        good = _submit(scheduler, network, 2, 2)
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = asyncio.run(main())
    assert isinstance(bad, ValueError) and good == 20


def test_lanes_are_shared_so_each_model_gets_up_to_one_loop_per_lane():
    async def main():
        scheduler, network = _scheduler(lanes=2), RecordingNetwork(seconds=0.002)
        await asyncio.gather(*(_submit(scheduler, network, i, 5) for i in range(8)))
        return network.calls

    calls = asyncio.run(main())
    # Eight requests spread over two loops: every call carries a share, no call all eight.
    assert max(len(c) for c in calls) < 8 and sum(len(c) for c in calls) == 40


# The served models through the step scheduler -------------------------------------------------


@pytest.fixture(scope="module")
def step_calls():
    """The service's calls on the bundled checkpoints, with step batching and without."""
    from service import metrics
    from service.calls import ModelCalls
    from service.settings import Settings

    def calls(step_batching: bool):
        settings = Settings(step_batching=step_batching)
        return ModelCalls.from_settings(settings, "cpu", metrics, lambda *args: None)

    return calls(True), calls(False)


def _sample(calls, seed, steps, sampler="ddim", eta=None, model="ddpm"):
    from service.schemas import SampleRequest

    request = SampleRequest(model=model, n=2, seed=seed, sampler=sampler, steps=steps, eta=eta)
    return calls.sample(request)


def test_a_seed_gives_the_same_images_alone_batched_and_joining_mid_flight(step_calls):
    stepped, whole = step_calls

    async def main():
        alone = await _sample(stepped, 5, 6, eta=1.0)
        today = await _sample(whole, 5, 6, eta=1.0)
        batched, *_ = await asyncio.gather(
            _sample(stepped, 5, 6, eta=1.0),
            _sample(stepped, 6, 9, sampler="ancestral"),
            _sample(stepped, 7, 3, eta=0.0),
        )
        long = asyncio.ensure_future(_sample(stepped, 8, 30, sampler="ancestral"))
        await asyncio.sleep(0.3)
        joined = await _sample(stepped, 5, 6, eta=1.0)
        assert not long.done()  # it joined mid-flight and left before the long request
        await long
        return alone, today, batched, joined

    alone, today, batched, joined = asyncio.run(main())
    assert alone.images == today.images  # the step scheduler draws what whole batches drew
    assert batched.images == alone.images and joined.images == alone.images


def test_encoding_and_decoding_in_steps_equal_their_whole_batch_answers(step_calls, test_images):
    from service.imaging import to_base64_png
    from service.schemas import DecodeRequest, EncodeRequest

    stepped, whole = step_calls
    images = [to_base64_png(image) for image in test_images[:2]]

    async def main():
        request = EncodeRequest(model="ddpm", images=images, steps=4)
        encoded = [await calls.encode(request) for calls in step_calls]
        latents = encoded[0].latents
        decoded = await asyncio.gather(
            *(
                calls.decode(DecodeRequest(model="ddpm", latents=latents, steps=5))
                for calls in step_calls
            ),
            _sample(stepped, 1, 7),  # sharing the decoding's calls
        )
        return encoded, decoded

    (enc_step, enc_whole), (dec_step, dec_whole, _) = asyncio.run(main())
    assert enc_step.model_dump() == enc_whole.model_dump()
    assert dec_step.images == dec_whole.images


def test_a_kind_without_step_level_loops_samples_as_before(step_calls):
    stepped, whole = step_calls

    async def main():
        return [await _sample(calls, 3, None, sampler=None, model="vae") for calls in step_calls]

    vae_stepped, vae_whole = asyncio.run(main())
    assert vae_stepped.images == vae_whole.images
