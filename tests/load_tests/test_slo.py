from dataclasses import dataclass

import pytest

from load_tests.slo import SloLimits, breaches, parse_limits_by_name


@dataclass
class FakeEntry:
    name: str
    p95_ms: float
    num_requests: int = 10
    method: str = "POST"

    def get_response_time_percentile(self, percent: float) -> float:
        assert percent == 0.95
        return self.p95_ms


def test_a_run_within_every_limit_passes():
    limits = SloLimits(max_fail_ratio=0.01, p95_ms=100, p95_ms_by_name={"slow": 1000})
    assert breaches(limits, 0.01, [FakeEntry("fast", 100), FakeEntry("slow", 900)]) == []


def test_failure_ratio_and_each_p95_past_its_limit_are_reported():
    limits = SloLimits(max_fail_ratio=0.0, p95_ms=100, p95_ms_by_name={"slow": 1000})
    found = breaches(limits, 0.5, [FakeEntry("fast", 150), FakeEntry("slow", 1100)])
    assert len(found) == 3
    assert "failure ratio" in found[0] and "fast" in found[1] and "slow" in found[2]


def test_names_without_a_limit_or_requests_are_not_judged():
    limits = SloLimits(p95_ms_by_name={"a": 10})
    assert breaches(limits, 0.0, [FakeEntry("b", 1e6), FakeEntry("a", 1e6, num_requests=0)]) == []


def test_per_name_limits_parse_names_with_spaces():
    assert parse_limits_by_name("/score vae 1=200; /sample ddpm=5e3;") == {
        "/score vae 1": 200.0,
        "/sample ddpm": 5000.0,
    }
    with pytest.raises(ValueError, match="NAME=MS"):
        parse_limits_by_name("200")
