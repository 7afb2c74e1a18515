"""`python -m embeddings_api --triton-url HOST:PORT [--host H] [--port P]`: the OpenAI-compatible
embeddings endpoint (embeddings_api/app.py) under uvicorn."""
from __future__ import annotations

import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """One-line mistakes, exit 1, as the stack's other commands (this package runs alone in its image)."""

    def error(self, message: str):
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from embeddings_api.app import ServiceSettings, create_app

    parser = ArgumentParser(prog="python -m embeddings_api", description=__doc__)
    parser.add_argument("--triton-url", required=True, help="Triton's gRPC address, host:port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--model-id", default=ServiceSettings.model_id, help="the `model` clients pass")
    parser.add_argument("--max-inputs", type=int, default=ServiceSettings.max_inputs, help="strings per request at most")
    args = parser.parse_args(argv)
    if args.max_inputs < 1:
        parser.error("--max-inputs must be at least 1")
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port} must be from 1 to 65535")
    host, _, port = args.triton_url.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--triton-url {args.triton_url!r} must be Triton's gRPC address as host:port (e.g. triton:8001)")
    settings = ServiceSettings(args.triton_url, model_id=args.model_id, max_inputs=args.max_inputs)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
