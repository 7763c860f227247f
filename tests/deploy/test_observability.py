"""The Grafana dashboard and the Prometheus rules, checked by the real Prometheus against a real
service: every PromQL expression in deploy/grafana/elbo-serve-dashboard.json and in
deploy/prometheus/*.yml is found here by reading the files (a new panel or rule is tested with
no change to this file), evaluated over Prometheus's HTTP API after real traffic, and must be
valid and return series; three alerts are made to fire.

Needs Debian's ``prometheus`` package (``prometheus`` and ``promtool``; ``make test`` installs
it). Without it the tests that need it are skipped.

CUDA memory: ``elbo_serve_cuda_memory_allocated_bytes`` exists only on a server that runs on a
GPU. On a CPU server its expressions must be valid and return *no* series (the dashboard's
panel says "no GPU replica" then), on a GPU server they must return series; the test knows
which from the device the server resolves.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import yaml

from load_tests.serving import REPO_ROOT, free_port, running_server, server_environment

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "elbo-serve-dashboard.json"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = ("rules.yml", "alerts.yml")
JOB = "elbo-serve"
# elbo_serve_cuda_memory_allocated_bytes and elbo_serve_cuda_memory_peak_bytes
CUDA_ONLY_PREFIX = "elbo_serve_cuda_memory_"
# What the test puts for Grafana's interval macros: all of its traffic is in the last minute.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="the real Prometheus is not installed (Debian package 'prometheus', with promtool; "
    "`make test` installs it): the dashboard and alert queries need it to be evaluated",
)


# The files: every expression, found by reading them --------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every query target of every panel, rows included."""
    found = []

    def visit(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{panel['title']} / {target['refId']}", target["expr"]))
            visit(panel.get("panels", []))

    visit(dashboard()["panels"])
    return found


def rule_expressions() -> list[tuple[str, str, bool]]:
    """(file: record or alert name, expr, is_alert) of every rule in the rule files."""
    found = []
    for name in RULE_FILES:
        for group in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["groups"]:
            for rule in group["rules"]:
                label = f"{name}: {rule.get('record') or rule.get('alert')}"
                found.append((label, rule["expr"], "alert" in rule))
    return found


def compared_quantities(expr: str) -> list[str]:
    """The quantities an alert expression compares: ``a > 0.5 and b > 0.1`` -> [a, b];
    ``absent(x == 1)`` -> [x]. Number literals are dropped. Splits at the top-level
    comparison and set operators (outside parentheses, braces, brackets and strings)."""
    expr = expr.strip()
    inner = re.fullmatch(r"absent\s*\((.*)\)", expr, re.S)
    if inner and _balanced(inner.group(1)):
        return compared_quantities(inner.group(1))
    parts = _split_top_level(expr)
    if len(parts) == 1:
        return [] if _is_number(expr) else [expr]
    return [quantity for part in parts for quantity in compared_quantities(part)]


_OPERATOR = re.compile(r"(==|!=|>=|<=|>|<|\band\b|\bor\b|\bunless\b)")
_MODIFIER = re.compile(r"^\s*(bool\b|(on|ignoring|group_left|group_right)\s*(\([^)]*\))?)")


def _split_top_level(expr: str) -> list[str]:
    parts, depth, quote, start, i = [], 0, None, 0, 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = None
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (match := _OPERATOR.match(expr, i)):
            parts.append(expr[start:i])
            i = match.end()
            while modifier := _MODIFIER.match(expr[i:]):  # `> bool`, `and on (model)`
                i += modifier.end()
            start = i
            continue
        i += 1
    parts.append(expr[start:])
    return [part.strip() for part in parts]


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# The files on their own --------------------------------------------------------------------------


@needs_prometheus
def test_rule_files_and_sample_config_pass_promtool_check():
    files = [str(PROMETHEUS_DIR / name) for name in RULE_FILES]
    checked = subprocess.run(["promtool", "check", "rules", *files], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = PROMETHEUS_DIR / "prometheus.yml"
    checked = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    sample = yaml.safe_load(config.read_text())
    assert sorted(sample["rule_files"]) == sorted(RULE_FILES)
    assert [job["job_name"] for job in sample["scrape_configs"]] == [JOB]


@needs_prometheus
def test_alert_unit_tests_pass_with_the_for_durations_as_written():
    """alerts_test.yml: synthetic series make every alert fire after its `for:` (a day of
    history for the drift baseline), and the healthy cases stay quiet."""
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=PROMETHEUS_DIR,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    unit_tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in unit_tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    alerts = {label.split(": ")[1] for label, _, is_alert in rule_expressions() if is_alert}
    assert fired == alerts, f"alerts never made to fire in alerts_test.yml: {alerts - fired}"


def test_dashboard_panels_query_the_datasource_variable_and_defined_variables():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["model"]["type"] == "query"
    assert "label_values(" in variables["model"]["query"]
    panels = board["panels"] + [c for p in board["panels"] for c in p.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys(), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    used = set()
    for _, expr in dashboard_targets():
        used |= set(re.findall(r"\$(\w+)", expr))
    for variable in variables.values():
        used |= set(re.findall(r"\$(\w+)", variable.get("query", "")))
    macros = {name.lstrip("$") for name in GRAFANA_MACROS}
    assert used <= variables.keys() | macros, f"undefined variables: {used - variables.keys()}"


def test_compared_quantities_splits_at_top_level_operators():
    assert compared_quantities('absent(up{job="x"} == 1)') == ['up{job="x"}']
    assert compared_quantities("abs(a - b) > 0.5\nand\nc > 0.1") == ["abs(a - b)", "c"]
    assert compared_quantities('a{le=">"} > bool on (m) b') == ['a{le=">"}', "b"]
    assert compared_quantities("sum by (x) (rate(m[5m]))") == ["sum by (x) (rate(m[5m]))"]


# Against a real service and the real Prometheus ---------------------------------------------


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> dict:
        """/api/v1/query at the current time; the response's data (resultType, result)."""
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (
            f"{expr!r} is not a valid query: {body.get('error', answer.text)}"
        )
        return body["data"]

    def series(self, match: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/series", params={"match[]": match}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["data"]

    def alerts(self) -> list[dict]:
        return requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]

    def wait_for(self, condition, what: str, timeout_s: float = 30.0):
        deadline = time.monotonic() + timeout_s
        while True:
            if result := condition():
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus: {what} within {timeout_s:.0f} s")
            time.sleep(0.25)


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """A real `bentoml serve` on the bundled checkpoints; (url, the device it serves on)."""
    from service.settings import Settings

    env = server_environment(
        {"ELBO_SERVE_TORCH_THREADS": "1"}, tmp_path_factory.mktemp("bentoml-home")
    )
    # The server's environment is this one with no device setting of its own: the same device.
    device = Settings.from_env().resolve_device()
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_server(env, log) as (url, _process):
            yield url, device
    except RuntimeError as error:  # not ready: the message carries the server's log
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def prometheus(service, tmp_path_factory) -> Iterator[tuple[Prometheus, str]]:
    """The real Prometheus on a free loopback port, configured from deploy/prometheus/
    prometheus.yml with 1 s scrape and evaluation intervals, scraping the service and a port
    where nothing listens (a dead replica); (client, the dead replica's instance label).

    It loads rules.yml as it is and alerts.yml with every `for:` set to 0 s, so that alerts
    fire within the test's seconds; the expressions are the files' own (the durations are
    checked by alerts_test.yml)."""
    url, _ = service
    work = tmp_path_factory.mktemp("prometheus")
    shutil.copy(PROMETHEUS_DIR / "rules.yml", work / "rules.yml")
    alerts = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    (work / "alerts.yml").write_text(yaml.safe_dump(alerts, sort_keys=False))

    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(work / name) for name in config["rule_files"]]
    dead = f"127.0.0.1:{free_port()}"
    live = url.removeprefix("http://")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [live, dead]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))

    port = free_port()
    log = open(work / "prometheus.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = Prometheus(f"http://127.0.0.1:{port}")
    try:
        client.wait_for(lambda: _ready(client, process), "ready", timeout_s=30)
        client.wait_for(
            lambda: client.query(f'up{{job="{JOB}", instance="{live}"}} == 1')["result"],
            "a first successful scrape of the service",
        )
        yield client, dead
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(client: Prometheus, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"prometheus exited with {process.returncode}")
    try:
        return requests.get(f"{client.url}/-/ready", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def traffic(service, prometheus) -> dict:
    """Real requests after Prometheus has scraped the idle service: samples, scores and bounds
    of Fashion-MNIST test images for both models, a few 4xx, /readyz probes as a load
    balancer sends them, then 160 images of uniform noise to the VAE's /score (all flagged).
    Returns the status codes seen."""
    from models.data import load_fashion_mnist

    url, _ = service
    images = load_fashion_mnist("test")[0][:8, 0].tolist()  # (8, 28, 28) integers
    noise = np.random.default_rng(0).integers(0, 256, size=(160, 28, 28)).tolist()
    seen: dict[str, list[int]] = {}

    def call(name: str, path: str, body: dict | None = None) -> None:
        if body is None:
            answer = requests.get(url + path, timeout=120)
        else:
            answer = requests.post(url + path, json=body, timeout=120)
        seen.setdefault(name, []).append(answer.status_code)

    # DDPM once (its calls take a second each here); the rest twice, a scrape apart, so that
    # rates and quantiles see increases (the warm-up made both models' bound and sample series
    # before the first scrape).
    call("sample ddpm", "/sample", {"model": "ddpm", "n": 1, "steps": 5})
    call("score ddpm", "/score", {"model": "ddpm", "images": images[:2]})
    call("likelihood ddpm", "/likelihood", {"model": "ddpm", "images": images[:1]})
    for _ in range(2):
        call("readyz", "/readyz")
        call("sample vae", "/sample", {"model": "vae", "n": 4})
        call("score vae", "/score", {"model": "vae", "images": images})
        call("likelihood vae", "/likelihood", {"model": "vae", "images": images[:4]})
        call("unknown model", "/score", {"model": "gan", "images": images[:1]})
        call("wrong shape", "/score", {"model": "vae", "images": [[[0] * 27] * 28]})
        call("n out of range", "/sample", {"model": "vae", "n": 0})
        call("unknown task", "/sample_task/status?task_id=nope")
        time.sleep(1.2)
    for start in range(0, len(noise), 16):
        call("score noise", "/score", {"model": "vae", "images": noise[start : start + 16]})
        call("readyz", "/readyz")
        time.sleep(0.15)
    time.sleep(2.5)  # a few scrapes and rule evaluations past the last request
    return seen


@needs_prometheus
def test_traffic_got_the_answers_it_was_meant_to(traffic):
    for name in ("sample vae", "sample ddpm", "score vae", "score ddpm", "score noise"):
        assert set(traffic[name]) == {200}, (name, traffic[name])
    assert set(traffic["likelihood vae"]) == set(traffic["likelihood ddpm"]) == {200}
    assert set(traffic["readyz"]) == {200}
    for name in ("unknown model", "wrong shape", "n out of range"):
        assert set(traffic[name]) == {400}, (name, traffic[name])
    assert set(traffic["unknown task"]) == {404}


@needs_prometheus
def test_alerts_fire_on_a_dead_replica_and_on_flagged_images(service, prometheus, traffic):
    """ElboServeTargetDown for the port where nothing listens, ElboServeFlaggedRateHigh and
    ElboServeScoreOffCalibration for the VAE after the noise (the card's calibration gauges
    match the served bounds' model and method labels); the healthy replica raises no
    availability alert, and ElboServeScoreDrift none for the VAE: its reference, the traffic
    of the last day, is the same noise."""
    client, dead = prometheus

    def firing():
        alerts = [a for a in client.alerts() if a["state"] == "firing"]
        names = {
            (a["labels"]["alertname"], a["labels"].get("instance", a["labels"].get("model")))
            for a in alerts
        }
        wanted = {
            ("ElboServeTargetDown", dead),
            ("ElboServeFlaggedRateHigh", "vae"),
            ("ElboServeScoreOffCalibration", "vae"),
        }
        return alerts if wanted <= names else None

    alerts = client.wait_for(
        firing,
        "ElboServeTargetDown, ElboServeFlaggedRateHigh and ElboServeScoreOffCalibration firing",
    )
    flagged = _vae_warning(alerts, "ElboServeFlaggedRateHigh")
    assert float(flagged["value"]) > 0.8  # 160 noise images among 178
    assert "flagged" in flagged["annotations"]["summary"]
    down = next(a for a in alerts if a["labels"]["alertname"] == "ElboServeTargetDown")
    assert down["labels"]["instance"] == dead
    off = _vae_warning(alerts, "ElboServeScoreOffCalibration")
    assert float(off["value"]) > 1  # noise scores bits/dim above the calibration's ~3.2
    active = {a["labels"]["alertname"] for a in client.alerts()}
    quiet = {"ElboServeNoReplicaUp", "ElboServeNotReady", "ElboServeHighErrorRatio"}
    assert not active & quiet, f"alerts on a healthy replica: {active & quiet}"
    drift = [a for a in client.alerts() if a["labels"]["alertname"] == "ElboServeScoreDrift"]
    assert not [a for a in drift if a["labels"]["model"] == "vae"], drift


@needs_prometheus
def test_every_dashboard_expression_returns_series(service, prometheus, traffic):
    _, device = service
    client, _ = prometheus
    values = _variable_values(client)
    checked = 0
    for where, expr in dashboard_targets():
        query = _substitute(expr, values)
        result = client.query(query)["result"]
        _assert_series(where, query, result, device)
        checked += 1
    assert checked >= 20


@needs_prometheus
def test_every_rule_expression_is_valid_and_its_quantities_return_series(
    service, prometheus, traffic
):
    """Recording rules must return series. An alert is a comparison, empty while healthy: it
    must be a valid query, and each quantity it compares must return series."""
    _, device = service
    client, _ = prometheus
    for where, expr, is_alert in rule_expressions():
        result = client.query(expr)["result"]
        if not is_alert:
            _assert_series(where, expr, result, device)
            continue
        quantities = compared_quantities(expr)
        assert quantities, f"{where}: no quantity found in {expr!r}"
        for quantity in quantities:
            _assert_series(
                f"{where} ({quantity})", quantity, client.query(quantity)["result"], device
            )


def _variable_values(client: Prometheus) -> dict[str, str]:
    """What Grafana would put for each template variable: the query variables' label values
    are asked of Prometheus (and must exist); multi-value variables take their All value."""
    values: dict[str, str] = {}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = _substitute(variable["query"], values)
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
        assert match, f"${variable['name']}: expected label_values(selector, label): {query}"
        selector, label = match.groups()
        found = sorted({s[label] for s in client.series(selector) if label in s})
        assert found, f"${variable['name']}: {query} returns no values"
        if variable.get("includeAll"):
            values[variable["name"]] = variable["allValue"]
        else:
            current = variable["current"]["value"]
            assert current in found, f"${variable['name']}: default {current!r} not in {found}"
            values[variable["name"]] = current
    return values


def _substitute(expr: str, values: dict[str, str]) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"a template variable is left in {expr!r}"
    return expr


def _assert_series(where: str, expr: str, result: list[dict], device: str) -> None:
    if CUDA_ONLY_PREFIX in expr and not device.startswith("cuda"):
        assert result == [], f"{where}: {CUDA_ONLY_PREFIX} on a {device} server: {result}"
        return
    assert result, f"{where}: {expr!r} returned no series"
    finite = [s for s in result if math.isfinite(float(s["value"][1]))]
    assert finite, f"{where}: {expr!r} returned only NaN/Inf: {result}"


def _vae_warning(alerts: list[dict], name: str) -> dict:
    """The alert called ``name`` among ``alerts``, checked to be a warning about the VAE's
    elbo on this test's job."""
    alert = next(a for a in alerts if a["labels"]["alertname"] == name)
    assert alert["labels"] == {
        "alertname": name,
        "job": JOB,
        "model": "vae",
        "method": "elbo",
        "severity": "warning",
    }
    return alert
