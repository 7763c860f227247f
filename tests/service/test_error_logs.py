"""What the server log says about errors: a client's mistake is one WARNING line with the
endpoint, the status, the message and the request's trace id; tracebacks are for 5xx only."""

import logging

import pytest

# W3C trace context: the OpenTelemetry middleware continues this trace, so its id is known.
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def server_log():
    """Every record of our and BentoML's loggers (whether or not they propagate), except
    BentoML's access log, which has one line per request, errors or not."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("elbo_serve", "bentoml")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler.records
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def _error_lines(records):
    return [r for r in records if r.name != "bentoml.access" and r.levelno >= logging.WARNING]


def _png_upload(data):
    return [("images", ("upload.png", data, "image/png"))]


CLIENT_ERRORS = [
    # (request, endpoint, status, what the line says)
    (
        {"url": "/sample", "json": {"model": "gan"}},
        "/sample",
        400,
        "model: no model is served as 'gan'; served: ",  # ours, from the repository
    ),
    (
        {"url": "/sample", "json": {"model": "no spaces"}},
        "/sample",
        400,
        "model: String should match pattern",  # BentoML's schema validation
    ),
    (
        {"url": "/decode", "json": {"model": "vae", "latents": [[0.0] * 31]}},
        "/decode",
        400,
        "latents[0]: expected shape (32,), got (31,)",  # ours
    ),
    (
        {"url": "/score", "data": {"model": "vae"}, "files": _png_upload(b"hello")},
        "/score",
        400,
        "images[0]: not a readable PNG image",  # ours, from the multipart middleware
    ),
    (
        {
            "url": "/sample",
            "content": b"{not json",
            "headers": {"Content-Type": "application/json"},
        },
        "/sample",
        400,
        "Invalid JSON",
    ),
    (
        {
            "url": "/sample",
            "content": b"\x80\x04N.",
            "headers": {"Content-Type": "application/vnd.bentoml+pickle"},
        },
        "/sample",
        415,
        "application/vnd.bentoml+pickle is not allowed",  # a BentoMLException
    ),
]


@pytest.mark.parametrize(("request_args", "endpoint", "status", "says"), CLIENT_ERRORS)
def test_a_client_error_is_one_warning_line_with_its_trace_id(
    client, server_log, request_args, endpoint, status, says
):
    headers = {**request_args.get("headers", {}), **TRACEPARENT}
    response = client.post(**{**request_args, "headers": headers})
    assert response.status_code == status, response.text
    lines = _error_lines(server_log)
    assert len(lines) == 1, [r.getMessage() for r in lines]
    (line,) = lines
    message = line.getMessage()
    assert line.levelno == logging.WARNING and line.exc_info is None, message
    assert message.startswith(f"{endpoint} answered {status}: ") and says in message, message
    assert f"trace={TRACE_ID}" in message
    assert "\n" not in message
    if "x-bentoml-request-id" in response.headers:  # the span id BentoML gives the client
        assert f"span={response.headers['x-bentoml-request-id']}" in message


def test_without_a_traceparent_the_line_has_the_servers_trace_id(client, server_log):
    response = client.post("/sample", json={"model": "vae", "n": 0})
    assert response.status_code == 400
    (line,) = _error_lines(server_log)
    trace_id = line.getMessage().split("trace=")[1][:32]
    assert int(trace_id, 16) != 0


def test_control_characters_a_client_sends_cannot_forge_log_lines(client, server_log):
    response = client.post("/sample", json={"model": "vae", "n\n2026 [ERROR] forged": 1})
    assert response.status_code == 400
    (line,) = _error_lines(server_log)
    assert "\n" not in line.getMessage() and "n\\n2026 [ERROR] forged" in line.getMessage()


def test_a_server_error_keeps_its_traceback(client, server_log, monkeypatch):
    from service import imaging

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the server")

    monkeypatch.setattr(imaging, "decode_latents", broken)
    response = client.post("/decode", json={"model": "vae", "latents": [[0.0] * 32]})
    assert response.status_code == 500
    (line,) = _error_lines(server_log)
    assert line.levelno == logging.ERROR and line.exc_info is not None
    assert "a bug in the server" in str(line.exc_info[1])
