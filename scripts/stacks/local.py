"""The local stack: builders as subprocesses into a local repository, Triton from the
nvidia-pytriton wheel, detached; no Docker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from converters.errors import UserError
from scripts.console import log, tail
from scripts.gpus import GPU_ORDER
from scripts.stack_settings import StackSettings
from scripts.stacks.base import Stack
from triton_models.registry import MODELS, by_key_or_service, get

ROOT = Path(__file__).resolve().parents[2]
# `clean` deletes a folder only when this file is in it: one the stack made, never one a user named
# that held other things (LOCAL_REPOSITORY's parent also gets work/ and local/ beside it).
MADE_BY_STACK = ".made-by-doc-triton"


class LocalStack(Stack):
    """Builders as subprocesses, Triton from the nvidia-pytriton wheel, detached, on CPU."""

    shares_host_memory = True

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

    @property
    def embeddings(self):
        from scripts.embeddings_service import LocalEmbeddingsService

        return LocalEmbeddingsService(self.state, self.grpc_url, self.settings.int("EMBEDDINGS_HTTP_PORT"))

    @property
    def embeddings_url(self) -> str:
        return self.embeddings.http_url

    def embeddings_running(self) -> bool:
        return self.embeddings.running_pid() is not None

    def start_embeddings(self) -> None:
        self._embeddings = self.embeddings
        log(f"embeddings endpoint started (pid {self._embeddings.start()}) at http://{self.embeddings_url}/v1")

    def build(self, keys: list[str], skip_current: bool = True) -> None:
        """Each model's builder in turn. With `skip_current` (what `up` does), a builder whose
        inputs match its last successful run's stamp (`scripts/build_stamp.py`) is not started."""
        from scripts.build_stamp import build_stamp, environment_key, is_current

        self.mps_plan()  # LOCAL_CUDA_MPS=on where it cannot work: said before minutes of building
        self.settings.refuse_placement_without_gpus(self.settings["LOCAL_DEVICE"] == "cuda", "set LOCAL_DEVICE=cuda")
        for folder in (self.repo, self.work, self.state):
            claim(folder)
        environment = environment_key(self._gpu_rows())  # the same for every builder of this run
        for index, key in enumerate(keys, 1):
            spec, started = get(key), time.monotonic()
            command, checkpoint = self._builder_command(key)
            published = [self.repo / name for name in spec.triton_names]
            stamp_file = self.state / f"build-{key}.stamp"
            if skip_current and is_current(stamp_file, build_stamp(command, checkpoint, published, environment)):
                log(f"[{index}/{len(keys)}] {key}: up to date, skipped in {time.monotonic() - started:.1f} s "
                    "(the same inputs as its last build; `stack build` runs the builder anyway)")
                continue
            stamp_file.unlink(missing_ok=True)
            log(f"[{index}/{len(keys)}] building {key} ({'demo checkpoint' if checkpoint is None else checkpoint})")
            result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **GPU_ORDER})
            (self.state / f"build-{key}.log").write_text(result.stdout + result.stderr)
            if result.returncode != 0:
                raise UserError(f"builder {key} failed with exit code {result.returncode}; Triton was not started. "
                                f"Last lines of {self.state / f'build-{key}.log'}:\n{tail(result.stderr or result.stdout)}")
            stamp_file.write_text(build_stamp(command, checkpoint, published, environment) + "\n")
            skipped = "published" not in result.stdout
            log(f"      {key}: {'up to date, skipped' if skipped else 'built'} in {time.monotonic() - started:.1f} s")

    def _builder_command(self, key: str) -> tuple[list[str], Path | None]:
        from triton_models.builder_contract import builder_arguments, builder_environment

        device = self.settings["LOCAL_DEVICE"]
        environment = builder_environment(  # on CUDA: instances on the model's GPUs (model_gpu_ids)
            get(key), self.settings.__getitem__, device, serve_backend=self.settings["LOCAL_SERVE_BACKEND"],
            gpus=self.settings.model_gpu_ids(key) if device == "cuda" else "")
        arguments = builder_arguments(key, environment, repo=self.repo, work_dir=self.work,
                                      checkpoints_dir=self.settings.path("CHECKPOINTS_DIR"))
        return [sys.executable, "-m", "triton_models.build", *arguments], self.settings.checkpoint(key)

    def _gpu_rows(self) -> str | None:
        """The host's GPUs, for the build stamp, where builds run on them."""
        if self.settings["LOCAL_DEVICE"] != "cuda":
            return None
        from scripts.gpus import host_gpus

        return repr(host_gpus())

    @property
    def exit_timeout_s(self) -> int:
        """How long a stopping Triton waits for in-flight requests and model unloads. GPU models
        took 12 to 18 s to unload on an H100, with or without MPS (Triton's own default is 30 s)."""
        return 30 if self.settings["LOCAL_DEVICE"] == "cuda" else 10

    def running_pid(self) -> int | None:
        from scripts.local_triton import recorded_pid

        return recorded_pid(self.pid_file)

    def start_server(self) -> None:
        from scripts.local_triton import LocalTriton, Ports, orphaned_shm_regions

        self.down(quiet=True)
        for region in orphaned_shm_regions():  # a killed server's regions would stay in memory for good
            region.unlink(missing_ok=True)
            log(f"removed {region}, left by a tritonserver that did not stop cleanly")
        ports = Ports(self.settings.int("TRITON_HTTP_PORT"), self.settings.int("TRITON_GRPC_PORT"),
                      self.settings.int("TRITON_METRICS_PORT"))
        self.log_file.unlink(missing_ok=True)
        first = tuple(p for p in self.settings["LOCAL_MODEL_PYTHONPATH"].split(os.pathsep) if p)
        # Exactly the configured models, not every folder the repository holds from earlier builds.
        names = [name for key in self.settings.models for name in get(key).triton_names]
        serve = ("--model-control-mode=explicit", *(f"--load-model={name}" for name in names))
        server = LocalTriton(self.repo, ports, log_path=self.log_file, backend_root=self.state / "server",
                             model_paths_first=first, extra_args=serve, environment=self.start_mps(),
                             exit_timeout_s=self.exit_timeout_s).start()
        self.pid_file.write_text(str(server.process.pid))
        self._server = server

    def mps_plan(self) -> tuple[bool, str]:
        """Whether `up` runs Triton under the stack's CUDA MPS daemon, and why (scripts/cuda_mps.py);
        a setting that cannot work fails here, before any build."""
        import shutil

        from scripts.cuda_mps import CONTROL, mps_decision

        return mps_decision(self.settings["LOCAL_CUDA_MPS"], self.settings["LOCAL_DEVICE"],
                            shutil.which(CONTROL), os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))

    def start_mps(self) -> dict[str, str]:
        """The stack's CUDA MPS daemon where LOCAL_CUDA_MPS wants it; returns the environment that
        points Triton at it."""
        from scripts.cuda_mps import MpsDaemon

        wanted, why = self.mps_plan()
        if not wanted:
            if self.settings["LOCAL_CUDA_MPS"] == "on":
                log(f"CUDA MPS: {why}")
            return {}
        daemon = MpsDaemon(self.state)
        log(f"CUDA MPS daemon running (pid {daemon.start()}): {why}")
        return daemon.environment()

    def check_alive(self) -> None:
        if getattr(self, "_embeddings", None) is not None:
            self._embeddings.check_alive()
        server = getattr(self, "_server", None)
        if server is not None and server.process.poll() is not None:
            raise UserError(f"tritonserver exited with code {server.process.returncode}; see {self.log_file}:\n"
                            f"{tail(self.log_file.read_text(errors='replace'))}")

    def model_folders(self, names: list[str]) -> dict[str, Path]:
        return {name: self.repo / name for name in names}

    def logs(self, service: str | None) -> str:
        """`triton` (default), `embeddings`, or a builder by model key (`e5_small_v2`) or compose service (`build-e5`)."""
        model = by_key_or_service(service)
        if service not in (None, "triton", "embeddings") and model is None:
            raise UserError(f"no service {service}; choose triton, embeddings or one of "
                            f"{', '.join(m.key for m in MODELS)}.")
        target = (self.log_file if service in (None, "triton") else self.embeddings.log_file if service == "embeddings"
                  else self.state / f"build-{model.key}.log")
        if not target.is_file():
            raise UserError(f"no log at {target}; run `python -m scripts.stack up --mode local` first.")
        return target.read_text(errors="replace")

    def server_running(self) -> bool:
        return self.running_pid() is not None

    def server_state(self) -> str:
        pid = self.running_pid()
        return f"running (pid {pid})" if pid else "not running"

    def server_pid(self) -> int | None:
        return self.running_pid()

    def clean(self) -> list[str]:
        import shutil

        self.down(quiet=True)
        deleted = []
        for path in (self.repo, self.work):
            if made_by_stack(path):
                shutil.rmtree(path, ignore_errors=True)
                deleted.append(str(path))
            elif path.exists():
                log(f"kept {path}: it holds what the stack did not make (and no {MADE_BY_STACK}); delete it "
                    "yourself if it is yours to delete")
        return deleted

    def down(self, quiet: bool = False) -> None:
        from scripts.local_triton import end_leftover_stubs, stop_process

        stopped_endpoint = self.embeddings.stop()  # before Triton: it is Triton's client
        if stopped_endpoint and not quiet:
            log(f"stopped the embeddings endpoint (pid {stopped_endpoint})")
        recorded = int(self.pid_file.read_text()) if self.pid_file.is_file() else None
        pid = self.running_pid()
        if pid:
            stop_process(pid, timeout=self.exit_timeout_s + 15)
            if not quiet:
                log(f"stopped tritonserver (pid {pid})")
        elif not quiet:
            log("tritonserver was not running")
        if recorded is not None:  # a server that died unclean leaves its model processes behind
            ended = end_leftover_stubs(recorded)
            if ended:
                log(f"ended {len(ended)} model process(es) left by tritonserver (pid {recorded}): {ended}")
        self.pid_file.unlink(missing_ok=True)
        from scripts.cuda_mps import MpsDaemon

        mps = MpsDaemon(self.state).stop()  # after Triton: its processes are the daemon's clients
        if mps and (not quiet or not mps.stopped):  # one still running is said even when quiet
            log(mps.message)


def made_by_stack(folder: Path) -> bool:
    """Whether `clean` may delete `folder`: marked when the stack made it, under the project's build/
    (the defaults), or holding only what the stack writes there (an older version's build: model
    folders and the builders' work, named after the models)."""
    if not folder.is_dir():
        return False
    if (folder / MADE_BY_STACK).is_file() or folder.resolve().is_relative_to(ROOT / "build"):
        return True
    ours = {name for spec in MODELS for name in spec.triton_names} | {"demo_checkpoints"}
    return all(entry.name.startswith(".") or (entry.is_dir() and entry.name in ours) for entry in folder.iterdir())


def claim(folder: Path) -> None:
    """Make `folder` the stack's (marked for `clean`) when the stack creates it or finds it empty; a
    folder with content stays as it is (`made_by_stack` says whether clean may delete it)."""
    new = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if new or not any(folder.iterdir()):
        (folder / MADE_BY_STACK).touch()
