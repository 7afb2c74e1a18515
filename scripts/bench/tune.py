"""`tune`: from a bench report, each model's batch size of best throughput within a latency
budget, written into `.env` (with a backup); the next `up` rebuilds what changed."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from converters.errors import UserError
from scripts.console import log
from scripts.stack_settings import StackSettings, load_settings
from triton_models.registry import MODELS


def choose_batch_sizes(points: list[dict], budget_ms: float, metric: str = "p95_ms") -> dict[str, int]:
    """Per model: the batch size of the highest served throughput whose latency metric fits the budget."""
    chosen = {}
    for model in sorted({p["model"] for p in points}):
        fitting = [p for p in points if p["model"] == model and p["kind"] == "served" and p[metric] <= budget_ms]
        if fitting:
            chosen[model] = max(fitting, key=lambda p: p["items_per_s"])["batch"]
    return chosen


def tune(settings: StackSettings, report: Path, budget_ms: float, metric: str, env_file: Path) -> dict[str, int]:
    from dotenv import set_key

    if not report.is_file():
        raise UserError(f"no bench report at {report}; run `python -m scripts.stack bench` first.")
    chosen = choose_batch_sizes(json.loads(report.read_text())["points"], budget_ms, metric)
    if not chosen:
        raise UserError(f"no benchmarked batch size keeps {metric} within {budget_ms:g} ms; raise --latency-budget-ms.")
    keys = {spec.triton_names[0]: spec.batch_size_key for spec in MODELS}
    if env_file.is_file():
        backup = env_file.with_name(f"{env_file.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(env_file, backup)
        log(f"kept a backup of {env_file} at {backup}")
    for model, batch in chosen.items():
        set_key(str(env_file), keys[model], str(batch), quote_mode="never")
        log(f"{keys[model]}={batch}  (best throughput of {model} with {metric} <= {budget_ms:g} ms)")
    load_settings(env_file, settings.root)  # what tune wrote must validate
    log("the next `up` rebuilds the models whose batch size changed")
    return chosen
