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
    """Writes `.env` only when every chosen value validates: a refused choice leaves it as it was."""
    from dotenv import set_key

    if not report.is_file():
        raise UserError(f"no bench report at {report}; run `python -m scripts.stack bench` first.")
    try:
        points = json.loads(report.read_text())["points"]
        chosen = choose_batch_sizes(points, budget_ms, metric)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise UserError(f"{report} is not a bench report ({type(exc).__name__}: {exc}); "
                        "run `python -m scripts.stack bench` to write one.") from None
    keys = {spec.triton_names[0]: spec.batch_size_key for spec in MODELS}  # each model's core: its max batch
    for model in [m for m in chosen if m not in keys]:
        log(f"{model}: not tuned (tune sets the max batch of each model's core: {', '.join(keys)})")
        del chosen[model]
    if not chosen:
        raise UserError(f"no benchmarked batch size of {', '.join(keys)} keeps {metric} within {budget_ms:g} ms; "
                        "raise --latency-budget-ms or bench those models.")
    values = {keys[model]: str(batch) for model, batch in chosen.items()}
    try:
        load_settings(env_file, settings.root, overrides=values)
    except UserError as exc:
        raise UserError(f"tune chose {', '.join(f'{k}={v}' for k, v in values.items())}, which the settings refuse "
                        f"({exc}); {env_file} is unchanged.") from None
    if env_file.is_file():
        backup = env_file.with_name(f"{env_file.name}.{time.strftime('%Y%m%d-%H%M%S')}.bak")
        shutil.copy2(env_file, backup)
        log(f"kept a backup of {env_file} at {backup}")
    for model, batch in chosen.items():
        set_key(str(env_file), keys[model], str(batch), quote_mode="never")
        log(f"{keys[model]}={batch}  (best throughput of {model} with {metric} <= {budget_ms:g} ms)")
    log("the next `up` rebuilds the models whose batch size changed")
    return chosen
