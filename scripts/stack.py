"""`python -m scripts.stack COMMAND`: build every model, serve it with Triton, and prove it answers.

Commands: up, build [MODEL], status, verify, logs [SERVICE], down, bench [MODEL], tune [MODEL].
Modes: `--mode docker` drives `docker compose` (builders -> volume -> Triton) and follows the
containers with the docker SDK; `--mode local` runs the same steps without Docker (builders as
subprocesses into a local repository, Triton from the nvidia-pytriton wheel, on CPU).
`--mode auto` (default) picks docker on a host with Docker and an NVIDIA GPU, else local.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from converters.errors import UserError
from scripts.report import ModelRow, table
from scripts.settings import StackSettings, load_settings
from triton_models.registry import MODELS, get

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def model_names(settings: StackSettings) -> list[str]:
    return [name for key in settings.models for name in get(key).triton_names]


# --- Triton health and verification (shared by both modes) -----------------------------------

def failed_models(client, names: list[str]) -> dict[str, str]:
    """Models among `names` whose load failed, with Triton's reason (from the repository index)."""
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return {entry["name"]: entry.get("reason") or "load failed"
            for entry in index
            if entry.get("name") in names and entry.get("state") == "UNAVAILABLE" and entry.get("reason")}


def wait_until_ready(grpc_url: str, names: list[str], timeout: float, alive=lambda: None) -> dict[str, float]:
    """Wait for live, then ready, then each model ready; returns seconds until each model was ready."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(grpc_url)
    started, ready_at = time.monotonic(), {}
    deadline = started + timeout
    while time.monotonic() < deadline:
        alive()
        failed = {}
        try:
            if client.is_server_live():
                for name in names:
                    if name not in ready_at and client.is_model_ready(name):
                        ready_at[name] = time.monotonic() - started
                if len(ready_at) == len(names):
                    return ready_at
                failed = failed_models(client, [n for n in names if n not in ready_at])
        except Exception:  # not accepting connections yet
            pass
        if failed:
            # Triton answers only once its first load pass is over, so UNAVAILABLE here is final.
            raise UserError("Triton could not load " + "; ".join(f"{n}: {why}" for n, why in failed.items())
                            + ". Fix the model (see `python -m scripts.stack logs`) and run `up` again.")
        time.sleep(0.5)
    missing = [n for n in names if n not in ready_at]
    raise UserError(f"Triton did not make {', '.join(missing)} ready within {timeout:.0f} s; run `python -m scripts.stack logs` "
                    "to see why.")


def verify_all(grpc_url: str, folders: dict[str, Path], load_times: dict[str, float] | None = None) -> tuple[list[ModelRow], bool]:
    import tritonclient.grpc as grpc

    from scripts.verify import verify_model

    client = grpc.InferenceServerClient(grpc_url)
    rows, all_ok = [], True
    for name, folder in folders.items():
        row = ModelRow.from_folder(folder)
        try:
            row.ready = "yes" if client.is_model_ready(name) else "no"
        except Exception:
            row.ready = "no"
        if row.ready == "yes":
            result = verify_model(client, folder)
            row.verified = "yes" if result.ok else f"NO: {result.detail}"
            all_ok &= result.ok
        else:
            all_ok = False
        if load_times and name in load_times:
            row.load_s = f"{load_times[name]:.1f}"
        rows.append(row)
    client.close()
    return rows, all_ok


# --- Local mode ---------------------------------------------------------------------------------

class LocalStack:
    """Builders as subprocesses, Triton from the nvidia-pytriton wheel, detached, on CPU."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.repo = settings.path("LOCAL_REPOSITORY")
        self.work = self.repo.parent / "work"  # ONNX files and demo checkpoints, kept for warm rebuilds
        self.state = self.repo.parent / "local"  # pid, server log, builder logs
        self.pid_file = self.state / "triton.pid"
        self.log_file = self.state / "triton.log"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.settings['TRITON_HTTP_PORT']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.settings['TRITON_GRPC_PORT']}"

    def build(self, keys: list[str]) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        for index, key in enumerate(keys, 1):
            spec = get(key)
            command = [sys.executable, "-m", "triton_models.build", key, "--repo", str(self.repo),
                       "--work-dir", str(self.work), "--max-batch-size", self.settings[spec.batch_size_key],
                       "--precision", self.settings["PRECISION"], "--serve-backend", self.settings["LOCAL_SERVE_BACKEND"],
                       "--device", self.settings["LOCAL_DEVICE"],
                       "--instance-count", self.settings["INSTANCE_COUNT"]]
            checkpoint = self.settings.checkpoint(key)
            if checkpoint is not None:
                command += ["--checkpoint", str(checkpoint)]
            log(f"[{index}/{len(keys)}] building {key} ({'demo checkpoint' if checkpoint is None else checkpoint})")
            started = time.monotonic()
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            (self.state / f"build-{key}.log").write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise UserError(f"builder {key} failed with exit code {result.returncode}; Triton was not started. "
                                f"Last lines of {self.state / f'build-{key}.log'}:\n{tail(result.stderr or result.stdout)}")
            skipped = "published" not in result.stdout
            log(f"      {key}: {'up to date, skipped' if skipped else 'built'} in {time.monotonic() - started:.1f} s")

    def running_pid(self) -> int | None:
        if not self.pid_file.is_file():
            return None
        pid = int(self.pid_file.read_text())
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return pid

    def start_server(self) -> None:
        from scripts.local_triton import LocalTriton, Ports

        self.down(quiet=True)
        ports = Ports(self.settings.int("TRITON_HTTP_PORT"), self.settings.int("TRITON_GRPC_PORT"),
                      self.settings.int("TRITON_METRICS_PORT"))
        self.log_file.unlink(missing_ok=True)
        first = tuple(p for p in self.settings["LOCAL_MODEL_PYTHONPATH"].split(os.pathsep) if p)
        server = LocalTriton(self.repo, ports, log_path=self.log_file, backend_root=self.state / "server",
                             model_paths_first=first).start()
        self.pid_file.write_text(str(server.process.pid))
        self._server = server

    def check_alive(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None and server.process.poll() is not None:
            raise UserError(f"tritonserver exited with code {server.process.returncode}; see {self.log_file}:\n"
                            f"{tail(self.log_file.read_text(errors='replace'))}")

    def model_folders(self, names: list[str]) -> dict[str, Path]:
        return {name: self.repo / name for name in names}

    def logs(self, service: str | None) -> str:
        target = self.log_file if service in (None, "triton") else self.state / f"build-{service}.log"
        if not target.is_file():
            raise UserError(f"no log at {target}; run `python -m scripts.stack up --mode local` first.")
        return target.read_text(errors="replace")

    def server_running(self) -> bool:
        return self.running_pid() is not None

    def server_state(self) -> str:
        pid = self.running_pid()
        return f"running (pid {pid})" if pid else "not running"

    def down(self, quiet: bool = False) -> None:
        from scripts.local_triton import stop_process

        pid = self.running_pid()
        if pid:
            stop_process(pid)
            if not quiet:
                log(f"stopped tritonserver (pid {pid})")
        elif not quiet:
            log("tritonserver was not running")
        self.pid_file.unlink(missing_ok=True)


# --- Docker mode --------------------------------------------------------------------------------

class ComposeStack:
    """`docker compose` for the lifecycle, the docker SDK to follow containers (by compose labels)."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.project = settings["COMPOSE_PROJECT_NAME"]
        try:
            import docker

            self.docker = docker.from_env()
            self.docker.ping()
        except Exception as exc:
            raise UserError(f"no Docker engine answers ({type(exc).__name__}); start Docker or use --mode local.") from None
        if settings.gpu_mode and not settings["TRITON_BASE_IMAGE"]:
            raise UserError("TRITON_BASE_IMAGE is empty: set it in .env to NVIDIA's tritonserver image (NGC release 25.01-py3).")

    @property
    def http_url(self) -> str:
        return f"{self.settings['TRITON_BIND_ADDRESS']}:{self.settings['TRITON_HTTP_PORT']}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings['TRITON_BIND_ADDRESS']}:{self.settings['TRITON_GRPC_PORT']}"

    def compose(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, **self.settings.compose_environment()}
        result = subprocess.run(["docker", "compose", *args], cwd=ROOT, env=env, text=True,
                                capture_output=capture, stdout=None if capture else sys.stderr)
        if check and result.returncode != 0:
            detail = tail(result.stderr or "") if capture else "see the output above"
            raise UserError(f"`docker compose {' '.join(args)}` failed with exit code {result.returncode}: {detail}")
        return result

    def container(self, service: str):
        found = self.docker.containers.list(all=True, filters={"label": [
            f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]})
        return found[0] if found else None

    def build(self, keys: list[str]) -> None:
        services = [get(k).compose_service for k in keys]
        log(f"building images for {', '.join(services + ['triton'])}")
        self.compose("build", *services, "triton")
        for index, (key, service) in enumerate(zip(keys, services), 1):
            log(f"[{index}/{len(services)}] running {service}")
            started = time.monotonic()
            self.compose("up", "--no-deps", "--detach", "--force-recreate", service)
            container = self.container(service)
            published = False
            for line in container.logs(stream=True, follow=True):
                text = line.decode(errors="replace").rstrip()
                published |= text.startswith("published")
                if text.startswith(("[build", "published", "up to date", "error")):
                    print(f"      {service}: {text}", flush=True)
            code = container.wait()["StatusCode"]
            if code != 0:
                raise UserError(f"builder service {service} failed with exit code {code}; Triton was not started. "
                                f"Last lines of its log:\n{tail(container.logs().decode(errors='replace'))}")
            log(f"      {key}: {'built' if published else 'up to date, skipped'} in {time.monotonic() - started:.1f} s")

    def start_server(self) -> None:
        self.compose("up", "--no-deps", "--detach", "--force-recreate", "triton")

    def check_alive(self) -> None:
        container = self.container("triton")
        if container is None:
            raise UserError("the triton container does not exist; run `python -m scripts.stack up`.")
        container.reload()
        if container.status in ("exited", "dead"):
            raise UserError(f"the triton container {container.status} (exit code {container.attrs['State']['ExitCode']}):\n"
                            f"{tail(container.logs().decode(errors='replace'))}")

    def model_folders(self, names: list[str]) -> dict[str, Path]:
        """Copy each model's config, manifest and golden answers out of the triton container."""
        import io
        import tarfile
        import tempfile

        container = self.container("triton")
        if container is None:
            raise UserError("the triton container does not exist; run `python -m scripts.stack up`.")
        target = Path(tempfile.mkdtemp(prefix="stack-verify-"))
        for name in names:
            (target / name).mkdir()
            for file in ("config.pbtxt", "manifest.json", "golden.npz"):
                try:
                    stream, _ = container.get_archive(f"/models/{name}/{file}")
                except Exception:
                    continue  # missing files show up as not verified
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as archive:
                    archive.extractall(target / name, filter="data")
            (target / name / "1").mkdir(exist_ok=True)
        return {name: target / name for name in names}

    def logs(self, service: str | None) -> str:
        container = self.container(service or "triton")
        if container is None:
            raise UserError(f"no container for service {service or 'triton'} in project {self.project}.")
        return container.logs().decode(errors="replace")

    def server_running(self) -> bool:
        container = self.container("triton")
        return container is not None and container.status == "running"

    def server_state(self) -> str:
        container = self.container("triton")
        if container is None:
            return "not created"
        container.reload()
        health = container.attrs.get("State", {}).get("Health", {}).get("Status", "no healthcheck")
        return f"{container.status} ({health})"

    def down(self, quiet: bool = False) -> None:
        self.compose("down", "--volumes", "--remove-orphans")


# --- Commands -------------------------------------------------------------------------------------

def choose_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    has_gpu = shutil.which("nvidia-smi") is not None
    return "docker" if has_gpu and shutil.which("docker") else "local"


PORT_KEYS = ("TRITON_HTTP_PORT", "TRITON_GRPC_PORT", "TRITON_METRICS_PORT")


def check_ports_free(stack, settings: StackSettings) -> None:
    """Before anything starts: the ports must be free, unless this stack's own server holds them."""
    from scripts.local_triton import port_in_use

    if stack.server_running():
        return
    host = settings["TRITON_BIND_ADDRESS"] if isinstance(stack, ComposeStack) else "127.0.0.1"
    busy = [f"{settings[k]} ({k})" for k in PORT_KEYS if port_in_use(settings.int(k), host if host != "0.0.0.0" else "127.0.0.1")]
    if busy:
        raise UserError(f"port {', '.join(busy)} is already in use on {host}; stop what holds it or set another port in .env.")


def up(stack, settings: StackSettings) -> int:
    keys = settings.models
    started = time.monotonic()
    check_ports_free(stack, settings)
    stack.build(keys)
    log("starting Triton")
    stack.start_server()
    names = model_names(settings)
    load_times = wait_until_ready(stack.grpc_url, names, settings.int("READY_TIMEOUT_S"), stack.check_alive)
    log(f"all {len(names)} models ready; sending each its golden inputs")
    rows, ok = verify_all(stack.grpc_url, stack.model_folders(names), load_times)
    print(table(rows))
    log(f"{'verified' if ok else 'NOT verified'} in {time.monotonic() - started:.1f} s; Triton HTTP at {stack.http_url}")
    return 0 if ok else 1


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


def bench(stack, settings: StackSettings, args: argparse.Namespace) -> Path:
    from scripts import bench as benchmark
    from converters.settings import parse_int_list

    folders = stack.model_folders(bench_names(settings, args.target))
    batches = list(parse_int_list(args.batch_sizes, "--batch-sizes"))
    concurrencies = list(parse_int_list(args.concurrency, "--concurrency"))
    shared_memory = args.shared_memory == "system"
    if shared_memory and not isinstance(stack, LocalStack):
        raise UserError("--shared-memory system needs Triton on this host's /dev/shm: use it with --local, "
                        "or leave it out in docker mode.")
    points = benchmark.sweep(stack.grpc_url, list(folders.values()), batches, concurrencies, args.duration,
                             raw=not args.no_raw, shared_memory=shared_memory)
    if not points:
        raise UserError("nothing to benchmark: the chosen models are not batched (max_batch_size 0).")
    device = benchmark.device_name()
    meta = {"device": device, "duration_s": args.duration, "shared_memory": args.shared_memory,
            "batch_sizes": batches, "concurrency": concurrencies}
    paths = benchmark.write_report(points, args.out, meta)
    for row in benchmark.summary(points):
        ratio = f", served/raw {row['served_over_raw']:.2f}" if row["served_over_raw"] else ""
        if row["server_overhead_ms"] is not None:
            ratio += f", server overhead {row['server_overhead_ms']:.1f} ms/request"
        if row["backend_overhead_ms"] is not None and row["transport_ms"] is not None:
            ratio += f" (backend {row['backend_overhead_ms']:.1f}, client and gRPC {row['transport_ms']:.1f})"
        log(f"{row['model']} batch {row['batch']}: {row['served_items_per_s']:,.0f} items/s "
            f"(concurrency {row['best_concurrency']}, p95 {row['p95_ms']:.1f} ms){ratio}")
    log(f"report: {', '.join(str(p) for p in paths)}")
    return paths[0]


def tune(settings: StackSettings, report: Path, budget_ms: float, metric: str, env_file: Path) -> dict[str, int]:
    import json

    from dotenv import set_key

    from scripts import bench as benchmark

    if not report.is_file():
        raise UserError(f"no bench report at {report}; run `python -m scripts.stack bench` first.")
    chosen = benchmark.choose_batch_sizes(json.loads(report.read_text())["points"], budget_ms, metric)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.stack", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("up", "build", "status", "verify", "logs", "down", "bench", "tune"))
    parser.add_argument("target", nargs="?", help="build/bench: a model; logs: a service (default triton)")
    parser.add_argument("--mode", choices=("auto", "docker", "local"), default="auto")
    parser.add_argument("--local", action="store_const", const="local", dest="mode", help="same as --mode local")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    sweep = parser.add_argument_group("bench and tune")
    sweep.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="client batch sizes (capped at each max)")
    sweep.add_argument("--concurrency", default="1,2,4", help="concurrent callers")
    sweep.add_argument("--duration", type=float, default=5.0, help="seconds per point")
    sweep.add_argument("--no-raw", action="store_true", help="skip the raw-model sweep")
    sweep.add_argument("--shared-memory", choices=("none", "system"), default="none",
                       help="bench: send numeric inputs through system shared memory (--local only)")
    sweep.add_argument("--out", type=Path, default=ROOT / "build" / "bench", help="report folder")
    sweep.add_argument("--latency-budget-ms", type=float, default=100.0, help="tune: latency budget")
    sweep.add_argument("--metric", choices=("p50_ms", "p95_ms", "p99_ms"), default="p95_ms", help="tune: latency metric")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.env_file, ROOT)
        mode = choose_mode(args.mode)
        stack = LocalStack(settings) if mode == "local" else ComposeStack(settings)
        if args.command == "up":
            return up(stack, settings)
        if args.command == "build":
            keys = [args.target] if args.target else settings.models
            unknown = [k for k in keys if k not in {m.key for m in MODELS}]
            if unknown:
                raise UserError(f"unknown model {unknown[0]}; choose from {', '.join(m.key for m in MODELS)}.")
            stack.build(keys)
            return 0
        if args.command in ("status", "verify"):
            log(f"mode {mode}; Triton {stack.server_state()}")
            names = model_names(settings)
            rows, ok = verify_all(stack.grpc_url, stack.model_folders(names))
            print(table(rows))
            return 0 if ok else 1
        if args.command == "logs":
            print(stack.logs(args.target))
            return 0
        if args.command == "down":
            stack.down()
            return 0
        if args.command == "bench":
            bench(stack, settings, args)
            return 0
        if args.command == "tune":
            tune(settings, args.out / "bench.json", args.latency_budget_ms, args.metric, args.env_file)
            return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
