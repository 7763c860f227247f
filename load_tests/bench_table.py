"""The benchmark's JSON as a printed table (one row per figure)."""

from __future__ import annotations

from typing import Any

MIB = 2**20


def _raw_rows(raw: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("matmul peak", f"{raw['matmul_peak_gflops']:.1f} GFLOP/s")]
    for name, w in raw["workloads"].items():
        rates = ", ".join(f"b{b}: {r:,.0f}" for b, r in w["items_per_second"].items())
        rows.append((f"raw {name} items/s", rates))
        in_lanes = ", ".join(f"b{b}: {r:,.0f}" for b, r in w["items_per_second_in_lanes"].items())
        rows.append((f"raw {name} items/s, {w['lanes']} lanes", in_lanes))
        rows.append(
            (
                f"raw {name} GFLOP/item, achieved",
                f"{w['gflop_per_item']:.4f}, {w['achieved_gflops']:.1f} GFLOP/s "
                f"({100 * w['share_of_matmul_peak']:.0f}% of peak)",
            )
        )
    return rows


def _http_rows(http: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for server, workloads in http["cells"].items():
        for name, cells in workloads.items():
            for c in cells:
                rows.append(
                    (
                        f"{server} {name} c={c['concurrency']}",
                        f"{c['requests_per_second']:,.1f} req/s, {c['items_per_second']:,.1f} "
                        f"items/s, p50/95/99 {c['p50_ms']:.0f}/{c['p95_ms']:.0f}/"
                        f"{c['p99_ms']:.0f} ms, {c['failures']} failed",
                    )
                )
    for key in ("score_over_noop",):
        rows.append((key, _levels(http[key])))
    for key in ("batching_gain", "bentoml_over_fastapi", "served_over_raw"):
        for name, levels in http.get(key, {}).items():
            rows.append((f"{key} {name}", _levels(levels)))
    for server, rss in http["peak_rss_bytes"].items():
        rows.append((f"peak RSS {server}", f"{rss / MIB:,.0f} MiB"))
    for server, moments in http.get("cuda_memory_bytes", {}).items():
        for moment, gauges in moments.items():
            shown = ", ".join(f"{name}: {value / MIB:,.0f} MiB" for name, value in gauges.items())
            rows.append((f"CUDA memory {server} {moment}", shown))
    return rows


def _levels(levels: dict[str, float]) -> str:
    return ", ".join(f"c={c}: {v:.2f}" for c, v in levels.items())


def _ddim_rows(ddim: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (
            f"{name} ({s['num_samples']} images)",
            f"{1000 * s['seconds_per_image']:.1f} ms/image, FD {s['frechet_distance']:.2f} "
            f"(real-data floor {s['real_data_floor']:.2f})",
        )
        for name, s in ddim["samplers"].items()
    ]


def _soak_rows(soak: dict[str, Any]) -> list[tuple[str, str]]:
    load = soak["load"]
    return [
        ("soak RSS after warm-up", f"{soak['rss_after_warm_up_bytes'] / MIB:,.0f} MiB"),
        ("soak RSS after soak", f"{soak['rss_after_soak_bytes'] / MIB:,.0f} MiB"),
        ("soak RSS growth", f"{100 * soak['rss_growth']:+.1f}%"),
        (
            f"soak load c={load['concurrency']}",
            f"{load['requests']} requests, {load['failures']} failed, p99 {load['p99_ms']:.0f} ms",
        ),
    ]


ROWS = {"raw": _raw_rows, "http": _http_rows, "ddim": _ddim_rows, "soak": _soak_rows}


def print_table(results: dict[str, Any]) -> None:
    rows = [
        row for part, rows_of in ROWS.items() if part in results for row in rows_of(results[part])
    ]
    width = max(len(name) for name, _ in rows) if rows else 0
    print(f"hardware: {results['hardware']}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
