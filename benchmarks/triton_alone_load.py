"""Triton's own load time, started by hand: the local stack's tritonserver command on its built
repository (the same models, arguments and environment, the stack's CUDA MPS daemon included),
timed from launch to every model ready, with no build check, stamps or verification around it.
`up`'s time over this figure is what the orchestrator adds.

    python -m benchmarks.triton_alone_load ENV_FILE     # prints seconds; leaves the server stopped
"""
import sys
import time
from pathlib import Path

from scripts.health import wait_until_ready
from scripts.stack import model_names
from scripts.stack_settings import load_settings
from scripts.stacks.local import LocalStack


def main() -> None:
    settings = load_settings(Path(sys.argv[1]))
    stack = LocalStack(settings)
    stack.down(quiet=True)
    started = time.monotonic()
    try:
        stack.start_server()
        wait_until_ready(stack.grpc_url, model_names(settings), settings.int("READY_TIMEOUT_S"), stack.check_alive)
        print(f"{time.monotonic() - started:.1f}")
    finally:
        stack.down(quiet=True)


if __name__ == "__main__":
    main()
