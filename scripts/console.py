"""How the orchestrator talks to its user: `[stack]` progress lines, and a log's last lines."""
from __future__ import annotations


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
