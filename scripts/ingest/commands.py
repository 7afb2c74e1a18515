"""`python -m scripts.stack ingest PATH... --out DIR [--ocr auto|always|never] [--ocr-hold S]` and
`python -m scripts.stack search "QUERY" [--top-k 5] [--out DIR]`, on the stack's Triton: its
`grpc_url` in the local and compose modes; on Kubernetes, the Triton Service through a
`kubectl port-forward` for the length of the command (`cluster_command`)."""
from __future__ import annotations

from pathlib import Path

from converters.errors import UserError
from scripts.console import log
from scripts.ingest.models import FINGERPRINT_MODELS, stack_fingerprint

# A page held longer than a model call may take (the client's timeout, models.Models) gains nothing.
MAX_OCR_HOLD_S = 600.0


def check_arguments(command: str, paths: list[Path], query: str | None, top_k: int,
                    ocr_hold_s: float | None = None, out: Path | None = None) -> None:
    """The command line's own errors, before any server is asked. (Of several inputs, the missing
    ones are failures in the ingest's report and the others go on; when none exists, it stops here.)"""
    if command == "ingest" and not paths:
        raise UserError("ingest needs at least one PDF, image or folder: python -m scripts.stack ingest PATH... --out DIR")
    if command == "ingest" and ocr_hold_s is not None and not 0 <= ocr_hold_s <= MAX_OCR_HOLD_S:
        raise UserError(f"--ocr-hold must be 0 to {MAX_OCR_HOLD_S:.0f} seconds, got {ocr_hold_s}.")
    if command == "ingest" and not any(path.exists() for path in paths):
        raise UserError(f"nothing to ingest: {', '.join(map(str, paths))} "
                        f"{'does' if len(paths) == 1 else 'do'} not exist.")
    if command == "search":
        if not query or not query.strip():
            raise UserError('search needs a query: python -m scripts.stack search "QUERY" [--top-k 5]')
        if top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {top_k}.")
        if out is not None:
            from scripts.ingest.store import require_store

            require_store(out)


def run_ingest(paths: list[Path], out: Path, grpc_url: str, fingerprint: str, ocr: str = "auto",
               progress: bool = True, ocr_hold_s: float | None = None) -> int:
    """Ingest, print the rates and the summary; 1 when any input failed, else 0."""
    from scripts.ingest.pipeline import OCR_HOLD_S, ingest

    check_arguments("ingest", paths, None, 1, ocr_hold_s)
    hold = OCR_HOLD_S if ocr_hold_s is None else ocr_hold_s
    report = ingest(paths, out, grpc_url, fingerprint, ocr=ocr, progress=progress, ocr_hold_s=hold)
    for line in report.lines():
        log(line)
    log(f"store: {out} (LanceDB table chunks, {report.chunks} rows written this run); Parquet: {report.parquet}")
    return 1 if report.failures else 0


def format_hits(hits: list[dict]) -> list[str]:
    lines = []
    for rank, hit in enumerate(hits, 1):
        box = ", ".join(f"{v:.3f}" for v in hit["box"])
        text = " ".join(hit["text"].split())
        lines.append(f"{rank}. {1 - hit['_distance']:.3f}  {hit['document']}  page {hit['page']}  {hit['element']}  "
                     f"[{box}]\n   {text[:200]}")
    return lines


def run_search(query: str | None, out: Path, grpc_url: str, top_k: int) -> int:
    from scripts.ingest.pipeline import search

    check_arguments("search", [], query, top_k)
    hits = search(query, out, grpc_url, top_k)
    if not hits:
        log(f"the store in {out} holds no chunks")
    for line in format_hits(hits):
        print(line)
    return 0


def check_installed() -> None:
    """The ingest extra's packages (not in the images: they are a client's)."""
    import importlib.util

    missing = [name for name in ("pypdfium2", "lancedb", "pyarrow") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"ingest and search need {', '.join(missing)}: pip install -e '.[ingest]' (make setup does).")


def stack_command(command: str, args, stack) -> int:
    """What scripts/stack.py calls for `ingest` and `search` with the stack of the chosen mode."""
    paths = [Path(p) for p in ([args.target] if args.target else []) + list(args.paths)]
    check_arguments(command, paths, args.target, args.top_k, args.ocr_hold, args.out)
    check_installed()
    if not stack.server_running():
        raise UserError("Triton is not running; run `python -m scripts.stack up` first.")
    if command == "ingest":
        fingerprint = stack_fingerprint(stack.model_folders(list(FINGERPRINT_MODELS)))
        return run_ingest(paths, args.out, stack.grpc_url, fingerprint, args.ocr, ocr_hold_s=args.ocr_hold)
    return run_search(args.target, args.out, stack.grpc_url, args.top_k)


def cluster_command(command: str, args, cluster) -> int:
    """`ingest` and `search` with `--mode kubernetes`: the chart's Triton Service, forwarded here.
    The fingerprint is the current builder Jobs' (each Job's name carries a hash of all it is given)."""
    paths = [Path(p) for p in ([args.target] if args.target else []) + list(args.paths)]
    check_arguments(command, paths, args.target, args.top_k, args.ocr_hold, args.out)
    check_installed()
    fingerprint = cluster.build_fingerprint() if command == "ingest" else ""
    with cluster.forwarded("triton", 8001) as url:
        if command == "ingest":
            return run_ingest(paths, args.out, url, fingerprint, args.ocr, ocr_hold_s=args.ocr_hold)
        return run_search(args.target, args.out, url, args.top_k)
