"""The benchmark's in-process parts run at tiny sizes and write every documented key."""

import json

import pytest

from load_tests.benchmark import main, parse_args


def test_quick_fills_only_the_sizes_left_at_their_defaults():
    args = parse_args(["--quick", "--raw-seconds", "9", "--parts", "raw,soak"])
    assert args.raw_seconds == 9 and args.soak_seconds == 5 and args.parts == ["raw", "soak"]
    with pytest.raises(SystemExit):
        parse_args(["--parts", "raw,gpu"])


@pytest.mark.slow
def test_in_process_parts_write_the_expected_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--quick", "--parts", "raw,ddim", "--batch-sizes", "1,2", "--raw-seconds", "0.05"]
    argv += ["--matmul-size", "64", "--ddim-steps", "2", "--ddim-samples", "4", "--out", str(out)]
    argv += ["--raw-ddim-steps", "2"]  # DDIM-50 of the bundled UNet is seconds per call on CPU
    argv += ["--ancestral-steps", "2"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {"command", "hardware", "options", "raw", "ddim"} <= set(results)
    workloads = results["raw"]["workloads"]
    assert set(workloads) == {"vae_elbo", "ddpm_vlb_mc", "ddim_2"}
    for workload in workloads.values():
        assert set(workload["items_per_second"]) == {"1", "2"}
        assert workload["gflop_per_item"] > 0 and workload["share_of_matmul_peak"] > 0
    assert results["raw"]["matmul_peak_gflops"] > 0
    ddim = results["ddim"]["samplers"]["ddim_2"]
    assert ddim["num_samples"] == 4 and ddim["frechet_distance"] > 0
    assert ddim["seconds_per_image"] > 0
    assert set(results["ddim"]["samplers"]) == {"ddim_2", "ancestral_2"}
    printed = capsys.readouterr().out
    assert "raw vae_elbo items/s" in printed and "ddim_2 (4 images)" in printed
