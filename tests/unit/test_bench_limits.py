"""The bench's baselines: the best of several raw paths, and the fp16 limit from counted FLOPs."""
import pytest
import torch

from scripts.bench.limits import flops_per_item, fp16_limit, peak_fp16_tflops
from scripts.bench.points import BenchPoint
from scripts.bench.report import summary


def _point(kind, items, concurrency=1, flops=None):
    return BenchPoint("m", kind, 8, concurrency, 10, items, 1.0, 2.0, 3.0, None, flops_per_item=flops)


def test_flops_are_counted_from_the_module_itself():
    layer = torch.nn.Linear(384, 1536, bias=False)
    assert flops_per_item(layer, (torch.zeros(1, 384),)) == 2 * 384 * 1536
    assert flops_per_item(layer, (torch.zeros(1, 128, 384),)) == 2 * 128 * 384 * 1536  # per token, times tokens


def test_peak_by_card_name_pcie_before_sxm():
    assert peak_fp16_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_fp16_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_fp16_tflops("CPU, 2 cores") is None
    assert fp16_limit(1e9, "NVIDIA H100 80GB HBM3") == 989_000.0 and fp16_limit(None, "NVIDIA H100") is None


def test_served_is_compared_with_the_best_raw_path_and_the_limit():
    points = [_point("served", 900.0, 4), _point("served", 700.0, 1), _point("raw eager", 400.0, flops=989e6),
              _point("raw compiled", 800.0), _point("raw graphs", 1000.0)]
    row = summary(points, "NVIDIA H100 80GB HBM3")[0]
    assert row["raw_path"] == "raw graphs" and row["served_over_raw"] == 0.9
    assert row["raw_paths_items_per_s"] == {"raw graphs": 1000.0, "raw compiled": 800.0, "raw eager": 400.0}
    assert row["fp16_limit_items_per_s"] == 1_000_000.0 and row["served_over_fp16_limit"] == 900.0 / 1e6
    cpu = summary(points, "CPU, 2 cores")[0]
    assert cpu["fp16_limit_items_per_s"] is None and cpu["served_over_fp16_limit"] is None


def test_raw_paths_flag_takes_the_compiled_runners_modes_and_names_a_wrong_one():
    from converters.errors import UserError
    from scripts.bench.raw import parse_raw_modes

    assert parse_raw_modes(None) is None
    assert parse_raw_modes("eager, graphs") == {"eager", "graphs"}
    for text in ("eager,turbo", ","):
        with pytest.raises(UserError, match=r"^--raw-paths takes some of eager,compiled,graphs, got "):
            parse_raw_modes(text)


def test_a_wrong_raw_path_is_one_error_line_before_any_work(capsys):
    from scripts.stack import main

    assert main(["bench", "--raw-paths", "turbo"]) == 1
    assert capsys.readouterr().err == "error: --raw-paths takes some of eager,compiled,graphs, got 'turbo'.\n"


@pytest.mark.parametrize("target, no_raw", [("eclair", False), ("e5_small_v2", True)])
def test_raw_paths_is_refused_where_it_picks_nothing(tmp_path, target, no_raw):
    import argparse

    from converters.errors import UserError
    from scripts.stack import bench
    from scripts.stack_settings import load_settings

    env = tmp_path / ".env"
    env.write_text("MODELS=e5_small_v2,eclair\n")
    args = argparse.Namespace(target=target, raw_modes=frozenset({"eager"}), no_raw=no_raw, duration=1.0)
    with pytest.raises(UserError, match=r"^--raw-paths picks a compiled model's raw paths: leave it out with --no-raw "):
        bench(None, load_settings(env, tmp_path), args)
