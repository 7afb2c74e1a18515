import pytest

from scripts.bench.tune import choose_batch_sizes


def _point(model, batch, items, p95, kind="served"):
    return {"model": model, "kind": kind, "batch": batch, "items_per_s": items, "p95_ms": p95, "p99_ms": p95 * 2}


def test_tune_picks_the_fastest_batch_within_the_budget():
    points = [_point("m", 1, 100, 5), _point("m", 8, 600, 40), _point("m", 32, 900, 150), _point("m", 64, 5000, 1, "raw")]
    assert choose_batch_sizes(points, 100) == {"m": 8}
    assert choose_batch_sizes(points, 1000) == {"m": 32}
    assert choose_batch_sizes(points, 100, metric="p99_ms") == {"m": 8}
    assert choose_batch_sizes(points, 1) == {}


def test_tune_writes_nothing_unless_every_choice_validates_and_names_a_bad_report(tmp_path, capsys):
    import json

    from converters.errors import UserError
    from scripts.bench.tune import tune
    from scripts.stack_settings import load_settings

    env = tmp_path / ".env"
    env.write_text("YOLOX_BATCH_SIZE=8\n")
    settings = load_settings(env, tmp_path)
    report = tmp_path / "bench.json"
    report.write_text(json.dumps({"points": [_point("yolox", 6, 900, 10), _point("yolox_uint8", 4, 950, 10)]}))
    with pytest.raises(UserError, match=r"tune chose YOLOX_BATCH_SIZE=6, which the settings refuse .*must be a power of "
                                        r"two.*\.env is unchanged\."):
        tune(settings, report, 100, "p95_ms", env)
    assert env.read_text() == "YOLOX_BATCH_SIZE=8\n" and list(tmp_path.glob("*.bak")) == []
    assert "yolox_uint8: not tuned" in capsys.readouterr().out
    report.write_text(json.dumps({"points": [_point("yolox", 16, 900, 10)]}))
    assert tune(settings, report, 100, "p95_ms", env) == {"yolox": 16}
    assert env.read_text() == "YOLOX_BATCH_SIZE=16\n" and len(list(tmp_path.glob("*.bak"))) == 1
    for text in ("not json", json.dumps({"rows": []}), json.dumps({"points": [{"model": "yolox"}]})):
        report.write_text(text)
        with pytest.raises(UserError, match=f"{report} is not a bench report"):
            tune(settings, report, 100, "p95_ms", env)


@pytest.mark.parametrize("extra, says", [
    ([], "error: e5_small_v2 not built here; run `python -m scripts.stack up` (or `build`) first."),
    (["--duration", "-1"], "error: --duration must be more than 0 seconds, got -1."),
    (["--concurrency", "0,2"], "error: --concurrency must be at least 1 each, got 0."),
])
def test_bench_names_a_bad_setting_or_an_unbuilt_model_in_one_line(tmp_path, capsys, extra, says):
    from scripts.stack import main

    env = tmp_path / ".env"
    env.write_text(f"LOCAL_REPOSITORY={tmp_path / 'repo'}\n")
    assert main(["bench", "e5_small_v2", "--local", "--env-file", str(env), *extra]) == 1
    assert capsys.readouterr().err.strip() == says
