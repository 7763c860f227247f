import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from load_tests.bench_parts import cuda_memory_gauges

GPU_METRICS = """\
# HELP elbo_serve_cuda_memory_allocated_bytes CUDA memory held by tensors
elbo_serve_cuda_memory_allocated_bytes{device="cuda:0"} 100.0
elbo_serve_cuda_memory_allocated_bytes{device="cuda:1"} 50.0
elbo_serve_cuda_memory_peak_bytes{device="cuda:0"} 900.0
elbo_serve_cuda_memory_peak_bytes{device="cuda:1"} 700.0
elbo_serve_requests_total{endpoint="/sample"} 3.0
"""


def _serving(status: int, body: str):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            200,
            GPU_METRICS,
            {
                "elbo_serve_cuda_memory_allocated_bytes": 150.0,
                "elbo_serve_cuda_memory_peak_bytes": 1600.0,
            },
        ),
        (200, 'elbo_serve_requests_total{endpoint="/sample"} 3.0\n', None),  # a CPU server
        (404, "not found", None),  # the FastAPI baseline has no /metrics
    ],
)
def test_the_benchmark_reads_both_cuda_gauges_summed_over_devices(status, body, expected):
    server = _serving(status, body)
    try:
        assert cuda_memory_gauges(f"http://127.0.0.1:{server.server_port}") == expected
    finally:
        server.shutdown()
