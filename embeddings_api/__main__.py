"""`python -m embeddings_api --triton-url HOST:PORT [--host H] [--port P]`: the OpenAI-compatible
embeddings endpoint (embeddings_api/app.py) under uvicorn."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from embeddings_api.app import ServiceSettings, create_app

    parser = argparse.ArgumentParser(prog="python -m embeddings_api", description=__doc__)
    parser.add_argument("--triton-url", required=True, help="Triton's gRPC address, host:port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--model-id", default=ServiceSettings.model_id, help="the `model` clients pass")
    parser.add_argument("--max-inputs", type=int, default=ServiceSettings.max_inputs, help="strings per request at most")
    args = parser.parse_args(argv)
    if args.max_inputs < 1:
        parser.error("--max-inputs must be at least 1")
    settings = ServiceSettings(args.triton_url, model_id=args.model_id, max_inputs=args.max_inputs)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
