"""`python -m scripts.stack COMMAND`: build every model, serve it with Triton, and prove it answers.

Commands: up, build [MODEL], status, verify, logs [SERVICE], down, clean, bench [MODEL], tune [MODEL],
soak, ingest PATH... [--out DIR] [--ocr auto|always|never] [--ocr-hold S], search "QUERY" [--top-k 5] (scripts/ingest/). `down` stops the server and keeps what was built; `clean` deletes it.
Modes: `--mode docker` drives `docker compose` (builders -> volume -> Triton) and follows the
containers with the docker SDK; `--mode local` runs the same steps without Docker (builders as
subprocesses into a local repository, Triton from the nvidia-pytriton wheel, on CPU).
`--mode kubernetes` installs the Helm chart in deploy/helm/doc-triton (scripts/stacks/kubernetes.py).
`--mode auto` (default) picks docker on a host with Docker and an NVIDIA GPU, else local.
The stacks live in `scripts/stacks/`, readiness in `scripts/health.py`, verification in `scripts/verify.py`, the
bench in `scripts/bench/`; this module holds the commands and the command line.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from converters.errors import ArgumentParser, UserError
from scripts.console import log
from scripts.health import wait_until_ready
from scripts.verify import verify_all
from scripts.report import table
from scripts.stack_settings import EMBEDDINGS_PORT_KEY, TRITON_PORT_KEYS, StackSettings, load_settings
from scripts.stacks.base import Stack
from triton_models.registry import MODELS, get

ROOT = Path(__file__).resolve().parent.parent


def model_names(settings: StackSettings) -> list[str]:
    return [name for key in settings.models for name in get(key).triton_names]


def make_stack(mode: str, settings: StackSettings) -> Stack:
    if mode == "local" and settings.eclair_on_trtllm:
        raise UserError("ECLAIR_RUNTIME=tensorrt_llm runs in docker mode only (NVIDIA's TensorRT-LLM image); "
                        "use --mode docker, or ECLAIR_RUNTIME=pytorch for the local mode.")
    if mode == "local":
        from scripts.stacks.local import LocalStack

        return LocalStack(settings)
    from scripts.stacks.compose import ComposeStack

    return ComposeStack(settings)


# --- Commands -------------------------------------------------------------------------------------

def choose_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    has_gpu = shutil.which("nvidia-smi") is not None
    return "docker" if has_gpu and shutil.which("docker") else "local"


def check_ports_free(stack: Stack, settings: StackSettings) -> None:
    """Before anything starts: the ports must be free, unless this stack's own server holds them."""
    from scripts.local_triton import port_in_use

    if stack.server_running():
        return
    # The endpoint outlives a killed Triton: its port is busy with our own process then.
    own_endpoint = stack.embeddings_running()
    keys = TRITON_PORT_KEYS + ((EMBEDDINGS_PORT_KEY,) if settings.serves_embeddings and not own_endpoint else ())
    busy = [f"{settings[k]} ({k})" for k in keys if port_in_use(settings.int(k), stack.port_host)]
    if busy:
        raise UserError(f"port {', '.join(busy)} is already in use on {stack.port_host}; stop what holds it or set "
                        "another port in .env.")


def up(stack: Stack, settings: StackSettings) -> int:
    keys = settings.models
    started = time.monotonic()
    check_ports_free(stack, settings)
    stack.build(keys)
    log("starting Triton")
    stack.start_server()
    names = model_names(settings)
    load_times = wait_until_ready(stack.grpc_url, names, settings.int("READY_TIMEOUT_S"), stack.check_alive)
    if settings.eclair_on_trtllm:
        from scripts.stacks.eclair_overlay import EclairOverlay

        EclairOverlay(settings).up()
    if settings.serves_embeddings:
        from scripts.embeddings_service import wait_ready

        stack.start_embeddings()
        wait_ready(stack.embeddings_url, 60, stack.check_alive)
    log(f"all {len(names)} models ready; sending each its golden inputs")
    rows, ok = verify_stack(stack, settings, load_times, overlay_wait_s=None)
    print(table(rows))
    log(f"{'verified' if ok else 'NOT verified'} in {time.monotonic() - started:.1f} s; Triton HTTP at {stack.http_url}")
    return 0 if ok else 1


def verify_stack(stack: Stack, settings: StackSettings, load_times: dict[str, float] | None = None,
                 overlay_wait_s: float | None = 10) -> tuple[list, bool]:
    """Every served model against its golden answers, the overlay's `eclair` included where it
    serves it (waited for up to `overlay_wait_s`; None: READY_TIMEOUT_S, as `up` does)."""
    folders = stack.model_folders(model_names(settings))
    rows, ok = verify_all(stack.grpc_url, folders, load_times)
    if settings.serves_embeddings:  # the OpenAI-compatible endpoint, through itself
        from scripts.embeddings_service import TEXT_MODEL, verify

        row = verify(stack.embeddings_url, folders[TEXT_MODEL])
        rows, ok = rows + [row], ok and row.verified == "yes"
    if settings.eclair_on_trtllm:
        from scripts.stacks.eclair_overlay import EclairOverlay

        row, overlay_ok = EclairOverlay(settings).verify(timeout_s=overlay_wait_s)
        rows, ok = rows + [row], ok and overlay_ok
    return rows, ok


def bench_names(settings: StackSettings, target: str | None) -> list[str]:
    """`bench MODEL`: a registry key (its core model) or a Triton name; default every core model."""
    if target is None:
        return [get(key).triton_names[0] for key in settings.models]
    for spec in MODELS:
        if target == spec.key:
            return [spec.triton_names[0]]
        if target in spec.triton_names:
            return [target]
    raise UserError(f"unknown model {target}; choose a model key or a Triton name of: {', '.join(model_names(settings))}.")


def built_folders(stack: Stack, names: list[str]) -> dict[str, Path]:
    """The models' published folders, or one sentence naming those not built."""
    folders = stack.model_folders(names)
    unbuilt = [name for name, folder in folders.items() if not (folder / "config.pbtxt").is_file()]
    if unbuilt:
        raise UserError(f"{', '.join(unbuilt)} not built here; run `python -m scripts.stack up` (or `build`) first.")
    return folders


def bench(stack: Stack, settings: StackSettings, args: argparse.Namespace) -> Path:
    from converters.conversion_settings import parse_int_list
    from scripts.bench.points import device_name, host_cpu
    from scripts.bench.report import summary, write_report
    from scripts.bench.sweep import sweep

    names = bench_names(settings, args.target)
    if args.raw_modes is not None and (args.no_raw or names == ["eclair"]):
        raise UserError("--raw-paths picks a compiled model's raw paths: leave it out with --no-raw or for "
                        "`bench eclair` (which measures generate and the graph decoder).")
    if not args.duration > 0:
        raise UserError(f"--duration must be more than 0 seconds, got {args.duration:g}.")
    if names == ["eclair"]:
        return bench_eclair(stack, args)
    batches = list(parse_int_list(args.batch_sizes, "--batch-sizes"))
    concurrencies = list(parse_int_list(args.concurrency, "--concurrency"))
    for flag, values in (("--batch-sizes", batches), ("--concurrency", concurrencies)):
        if min(values) < 1:
            raise UserError(f"{flag} must be at least 1 each, got {min(values)}.")
    folders = built_folders(stack, names)
    shared_memory = args.shared_memory == "system"
    if shared_memory and not stack.shares_host_memory:
        raise UserError("--shared-memory system needs Triton on this host's /dev/shm: use it with --local, "
                        "or leave it out in docker mode.")
    if args.sequence_length < 1:
        raise UserError(f"--sequence-length must be at least 1, got {args.sequence_length}.")
    points = sweep(stack.grpc_url, list(folders.values()), batches, concurrencies, args.duration,
                   raw=not args.no_raw, shared_memory=shared_memory, sequence_length=args.sequence_length,
                   raw_modes=args.raw_modes)
    if not points:
        raise UserError("nothing to benchmark: the chosen models are not batched (max_batch_size 0).")
    device = device_name()
    meta = {"device": device, "host": host_cpu(), "duration_s": args.duration, "shared_memory": args.shared_memory,
            "sequence_length": args.sequence_length,
            "batch_sizes": batches, "concurrency": concurrencies}
    paths = write_report(points, args.out, meta)
    for row in summary(points, device):
        ratio = f", served/{row['raw_path']} {row['served_over_raw']:.2f}" if row["served_over_raw"] else ""
        if row["served_over_fp16_limit"]:
            ratio += f", {row['served_over_fp16_limit']:.2f} of the fp16 limit ({row['fp16_limit_items_per_s']:,.0f}/s)"
        if row["server_overhead_ms"] is not None:
            ratio += f", server overhead {row['server_overhead_ms']:.1f} ms/request"
        if row["backend_overhead_ms"] is not None and row["transport_ms"] is not None:
            ratio += f" (backend {row['backend_overhead_ms']:.1f}, client and gRPC {row['transport_ms']:.1f})"
        log(f"{row['model']} batch {row['batch']}: {row['served_items_per_s']:,.0f} items/s "
            f"(concurrency {row['best_concurrency']}, p95 {row['p95_ms']:.1f} ms){ratio}; inputs "
            + ", ".join(f"{name} {shape}" for name, shape in (row["input_shapes"] or {}).items()))
    log(f"report: {', '.join(str(p) for p in paths)}")
    return paths[0]


def bench_eclair(stack: Stack, args: argparse.Namespace) -> Path:
    """`bench eclair`: tokens/s and pages/s of generate, the graph decoder and served, on pages whose
    lengths differ, against the HBM floor of one step (scripts/bench/eclair.py)."""
    from converters.conversion_settings import parse_int_list
    from scripts.bench.eclair import bench_eclair as run
    from scripts.bench.points import device_name, host_cpu

    low, high = parse_int_list(args.eclair_lengths, "--eclair-lengths")
    if not 1 <= low <= high:
        raise UserError(f"--eclair-lengths {args.eclair_lengths} must be LOW,HIGH with 1 <= LOW <= HIGH.")
    if args.eclair_pages < 1:
        raise UserError(f"--eclair-pages must be at least 1, got {args.eclair_pages}.")
    report = run(stack.grpc_url, built_folders(stack, ["eclair"])["eclair"], args.eclair_pages, (low, high),
                 args.out, device_name(), with_generate=not args.no_raw, host=host_cpu())
    floor = report["hbm_floor_tokens_per_s"]
    log(f"eclair on {report['device']} (host: {report['host']}): {report['pages']} pages {report['page_shape']}, {report['slots']} slots, "
        f"lengths {report['lengths']['low']}..{report['lengths']['high']} tokens (mean {report['lengths']['mean']:.0f}, forced)"
        + (f"; HBM floor {floor:,.0f} tokens/s" if floor else ""))
    for point in report["points"]:
        share = f", {point['of_hbm_floor']:.2f} of the floor" if point["of_hbm_floor"] else ""
        log(f"  {point['path']:<8} {point['tokens_per_s']:>10,.0f} tokens/s  {point['pages_per_s']:>8.2f} pages/s{share}")
    log(f"  graph path's scheduler: {report['graph_scheduler_times']} (served: Triton's log, 'ECLAIR scheduler:')")
    log(f"report: {args.out / 'eclair.json'}")
    return args.out / "eclair.json"


def soak(stack: Stack, settings: StackSettings, args: argparse.Namespace) -> int:
    from scripts.soak import JUDGED_AFTER_S, run_soak, write_report

    if args.clients < 1 or args.minutes <= 0:
        raise UserError("--clients must be at least 1 and --minutes positive.")
    names = model_names(settings)
    if not stack.server_running():
        raise UserError("Triton is not running; run `python -m scripts.stack up` first.")
    folders = stack.model_folders(names)

    def alive() -> bool:
        try:
            stack.check_alive()
            return True
        except UserError:
            return False

    log(f"soak: {args.clients} clients for {args.minutes:g} min over {len(folders)} models "
        f"(a malformed request every 10th call)")
    result = run_soak(stack.grpc_url, folders, stack.server_pid, alive, args.clients, args.minutes * 60,
                      sample_every_s=args.sample_every)
    paths = write_report(result, args.out / "soak")
    counts = result.counts
    log(f"answers right {counts.get('right', 0)}, wrong {counts.get('wrong', 0)}, failed {counts.get('failed', 0)}; "
        f"malformed refused {counts.get('refused', 0)}, answered {counts.get('accepted', 0)}")
    for window in result.latency_windows:
        log(f"  {window['start_s']:6.0f} s: {window['requests']} good requests, p50 {window['p50_ms']:.1f} ms, "
            f"p95 {window['p95_ms']:.1f} ms, p99 {window['p99_ms']:.1f} ms")
    for label, values in result.memory.items():
        if values:
            log(f"  memory {label}: {values[0]:.0f} -> {values[-1]:.0f} MB (max {max(values):.0f}), "
                f"last third {result.memory_rise_mb[label]:+.0f} MB")
    if not result.memory_judged:
        log(f"memory not judged: a run under {JUDGED_AFTER_S / 60:g} min is still warming up")
    log(f"report: {', '.join(str(p) for p in paths)}")
    if result.failures:
        for problem in result.first_problems:
            log(f"  {problem}")
        raise UserError("soak failed: " + "; ".join(result.failures) + ".")
    log("soak passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m scripts.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "build", "status", "verify", "logs", "down", "clean", "bench", "tune",
                                            "soak", "ingest", "search"))
    parser.add_argument("target", nargs="?", help="build/bench: a model; logs: a service (default triton); "
                                                  "ingest: a PDF, image or folder; search: the query")
    parser.add_argument("paths", nargs="*", help="ingest: more PDFs, images or folders")
    parser.add_argument("--mode", choices=("auto", "docker", "local", "kubernetes"), default="auto")
    parser.add_argument("--local", action="store_const", const="local", dest="mode", help="same as --mode local")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="the settings (default: .env in the repository, if there; a file named here must exist)")
    sweep = parser.add_argument_group("bench and tune")
    sweep.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="client batch sizes (capped at each max)")
    sweep.add_argument("--concurrency", default="1,2,4", help="concurrent callers")
    sweep.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    sweep.add_argument("--no-raw", action="store_true", help="skip the raw-model sweep")
    sweep.add_argument("--raw-paths", default=None,
                       help="bench: a compiled model's raw paths, of eager,compiled,graphs (default: all the card runs; "
                            "eager counts the FLOPs behind the fp16 limit)")
    sweep.add_argument("--shared-memory", choices=("none", "system"), default="none",
                       help="bench: send numeric inputs through system shared memory (--local only)")
    sweep.add_argument("--out", type=Path, default=None,
                       help="report folder (default build/bench); ingest and search: the chunk store (default build/ingest)")
    sweep.add_argument("--sequence-length", type=int, default=128,
                       help="tokens per text where a core's axis is variable (E5); fixed-length models keep theirs")
    sweep.add_argument("--eclair-pages", type=int, default=64, help="bench eclair: pages")
    sweep.add_argument("--eclair-lengths", default="32,512", help="bench eclair: new tokens per page, LOW,HIGH (forced)")
    sweep.add_argument("--latency-budget-ms", type=float, default=100.0, help="tune: latency budget")
    sweep.add_argument("--metric", choices=("p50_ms", "p95_ms", "p99_ms"), default="p95_ms", help="tune: latency metric")
    soak_group = parser.add_argument_group("soak")
    soak_group.add_argument("--clients", type=int, default=16, help="soak: concurrent gRPC clients")
    soak_group.add_argument("--minutes", type=float, default=10.0, help="soak: how long")
    soak_group.add_argument("--sample-every", type=float, default=5.0, help="soak: seconds between memory readings")
    ingest_group = parser.add_argument_group("ingest and search")
    ingest_group.add_argument("--ocr", choices=("auto", "always", "never"), default="auto",
                              help="ingest: ECLAIR on pages without a text layer (auto), on every page, or never")
    ingest_group.add_argument("--ocr-hold", type=float, default=None, metavar="SECONDS",
                              help="ingest: how long a page bound for ECLAIR may wait for others, so that its "
                                   "decoder takes them together (default 2; 0 sends each at once)")
    ingest_group.add_argument("--top-k", type=int, default=5, help="search: how many chunks")
    args = parser.parse_args(argv)
    if args.paths and args.command != "ingest":
        parser.error(f"{args.command} takes at most one argument; got {args.target} {' '.join(args.paths)}")
    if args.out is None:
        args.out = ROOT / "build" / ("ingest" if args.command in ("ingest", "search") else "bench")
    named_env_file, args.env_file = args.env_file, args.env_file or ROOT / ".env"
    try:
        if named_env_file is not None and not named_env_file.is_file() and args.command != "tune":  # tune writes one
            raise UserError(f"--env-file {named_env_file} is not a file; name your settings file (cp .env.example .env).")
        args.raw_modes = None
        if args.raw_paths is not None:  # a command-line mistake, named before any work
            from scripts.bench.raw import parse_raw_modes

            args.raw_modes = parse_raw_modes(args.raw_paths)
        settings = load_settings(args.env_file, ROOT, host_checkpoints=args.mode != "kubernetes")
        mode = "kubernetes" if args.mode == "kubernetes" else choose_mode(args.mode)
        if settings["PRECISION"] == "fp8" and mode != "local":
            raise UserError(f"PRECISION=fp8 runs in the local mode's compiled path only; --mode {mode} builds TensorRT "
                            "engines or ONNX Runtime runners: use PRECISION=fp16 there, or --mode local.")
        if args.mode == "kubernetes" and args.command in ("ingest", "search"):
            from scripts.ingest.commands import cluster_command
            from scripts.stacks.kubernetes import KubernetesStack

            return cluster_command(args.command, args, KubernetesStack(settings))
        if args.mode == "kubernetes":
            from scripts.stacks.kubernetes import run_command

            return run_command(args.command, args.target, settings)
        stack = make_stack(mode, settings)
        if args.command == "up":
            return up(stack, settings)
        if args.command == "build":
            keys = [args.target] if args.target else settings.models
            unknown = [k for k in keys if k not in {m.key for m in MODELS}]
            if unknown:
                raise UserError(f"unknown model {unknown[0]}; choose from {', '.join(m.key for m in MODELS)}.")
            stack.build(keys, skip_current=False)
            return 0
        if args.command in ("status", "verify"):
            log(f"mode {mode}; Triton {stack.server_state()}")
            rows, ok = verify_stack(stack, settings)
            print(table(rows))
            return 0 if ok else 1
        if args.command == "logs":
            print(stack.logs(args.target))
            return 0
        if args.command == "down":
            stack.down()
            log("stopped; what was built is kept (the next `up` skips current models; `clean` deletes it)")
            return 0
        if args.command == "clean":
            deleted = stack.clean()
            log("deleted " + (", ".join(deleted) if deleted else "nothing the stack made"))
            return 0
        if args.command == "soak":
            return soak(stack, settings, args)
        if args.command in ("ingest", "search"):
            from scripts.ingest.commands import stack_command

            return stack_command(args.command, args, stack)
        if args.command == "bench":
            bench(stack, settings, args)
            return 0
        if args.command == "tune":
            from scripts.bench.tune import tune

            tune(settings, args.out / "bench.json", args.latency_budget_ms, args.metric, args.env_file)
            return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
