from scripts.bench.tune import choose_batch_sizes


def _point(model, batch, items, p95, kind="served"):
    return {"model": model, "kind": kind, "batch": batch, "items_per_s": items, "p95_ms": p95, "p99_ms": p95 * 2}


def test_tune_picks_the_fastest_batch_within_the_budget():
    points = [_point("m", 1, 100, 5), _point("m", 8, 600, 40), _point("m", 32, 900, 150), _point("m", 64, 5000, 1, "raw")]
    assert choose_batch_sizes(points, 100) == {"m": 8}
    assert choose_batch_sizes(points, 1000) == {"m": 32}
    assert choose_batch_sizes(points, 100, metric="p99_ms") == {"m": 8}
    assert choose_batch_sizes(points, 1) == {}
