"""A real Triton Inference Server without containers: the binary in the nvidia-pytriton wheel.

That build carries only the python backend, so it serves the python_onnx runner and the
python-backend pre/post-processing models; TensorRT plans need NVIDIA's images on a GPU host.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError
from scripts.gpus import GPU_ORDER

REPO_ROOT = Path(__file__).resolve().parent.parent

# glibc's malloc, as Triton and its python stubs use it, keeps freed buffers in per-thread arenas
# and raises its mmap threshold after each large free, so the multi-MB request tensors of a long
# run end up scattered over arenas that never shrink: resident memory climbed ~200 MB a minute
# under 16 clients. A fixed threshold returns every buffer over 1 MiB to the system when freed,
# and two arenas bound the rest. Set here only where the environment has no value of its own;
# docker/triton-entrypoint.sh sets the same for the image.
MALLOC_ENVIRONMENT = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "1048576"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def triton_distribution() -> Path:
    """The wheel's `tritonserver/` folder, found without importing pytriton (and its dependencies)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise UserError("the local Triton needs the nvidia-pytriton wheel: pip install -e '.[local]'.")
    return Path(spec.origin).parent / "tritonserver"


def layout_backends(root: Path) -> Path:
    """Lay out `<root>/backends/python` as Triton expects: the wheel's python backend plus the
    stub built for the running Python. Returns `<root>/backends`."""
    dist = triton_distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"nvidia-pytriton has no python backend stub for Python {version}; use Python 3.8-3.13.")
    python_backend = Path(root) / "backends" / "python"
    shutil.copytree(dist / "backends" / "python", python_backend, dirs_exist_ok=True)
    # Replaced, not overwritten: a stub still running from the last layout keeps its own file.
    staged = python_backend / ".triton_python_backend_stub.new"
    shutil.copy2(stub, staged)
    os.replace(staged, python_backend / "triton_python_backend_stub")
    _link_libpython(Path(root) / "lib")
    return python_backend.parent


def _link_libpython(folder: Path) -> None:
    """`folder` holds only a link to this Python's shared libpython, which the stub needs.

    Python's whole LIBDIR (often /usr/lib/<arch>) on LD_LIBRARY_PATH would put every system library
    ahead of those PyTorch finds through RUNPATH: on a GPU host with a system cuDNN, the stub's
    PyTorch chose slower attention kernels than in any other process (docs/results/h100/bench/attention_kernels.txt)."""
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY") or ""
    source = Path(sysconfig.get_config_var("LIBDIR") or "") / name
    folder.mkdir(parents=True, exist_ok=True)
    if name and source.is_file():
        link = folder / name
        link.unlink(missing_ok=True)
        link.symlink_to(source)


def library_path(root: Path) -> str:
    """LD_LIBRARY_PATH for the wheel's tritonserver laid out in `root`: its bundled libraries and libpython."""
    return os.pathsep.join([str(triton_distribution().parent.parent / "nvidia_pytriton.libs"), str(Path(root) / "lib")])


@dataclass
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def free(cls) -> "Ports":
        return cls(free_port(), free_port(), free_port())


class LocalTriton:
    """Start, wait for and stop one tritonserver process on a model repository."""

    def __init__(self, model_repository: Path, ports: Ports | None = None, log_path: Path | None = None,
                 extra_args: tuple[str, ...] = (), exit_timeout_s: int = 10, backend_root: Path | None = None,
                 model_paths_first: tuple[str, ...] = (), environment: dict[str, str] | None = None) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.ports = ports or Ports.free()
        self.log_path = log_path
        self.extra_args = extra_args
        self.backend_root = backend_root  # a lasting folder for the backends (detached servers); default: temporary
        self.exit_timeout_s = exit_timeout_s  # how long a stop waits for in-flight requests and open connections
        # Folders put first on the python-backend models' path: the wheel's stub is built against
        # NumPy 1, so an environment with NumPy 2 needs a NumPy 1 folder here.
        self.model_paths_first = model_paths_first
        self.environment = environment or {}  # more variables for the server (a CUDA MPS pipe folder)
        self.process: subprocess.Popen | None = None
        self._workdir: tempfile.TemporaryDirectory | None = None
        self._log_handle = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def _layout_root(self) -> Path:
        if self.backend_root is not None:
            return self.backend_root
        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="triton-backends-")
        return Path(self._workdir.name)

    def _environment(self) -> dict[str, str]:
        env = {**MALLOC_ENVIRONMENT, **os.environ, **self.environment, **GPU_ORDER}
        root = self._layout_root()
        env["LD_LIBRARY_PATH"] = os.pathsep.join([library_path(root), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        # Python-backend models see third-party packages (and this repository) only through PYTHONPATH.
        paths = list(self.model_paths_first) + [str(REPO_ROOT)]
        paths += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
        env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def start(self) -> "LocalTriton":
        for name, port in vars(self.ports).items():
            if port_in_use(port):
                raise UserError(f"port {port} ({name}) is already in use; free it or choose another port.")
        if not self.model_repository.is_dir():
            raise UserError(f"model repository {self.model_repository} does not exist; build the models first.")
        command = [str(triton_distribution() / "bin" / "tritonserver"),
                   f"--model-repository={self.model_repository}",
                   f"--backend-directory={layout_backends(self._layout_root())}",
                   f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                   f"--metrics-port={self.ports.metrics}", "--allow-metrics=true",
                   "--exit-on-error=false", "--strict-readiness=true",
                   f"--exit-timeout-secs={self.exit_timeout_s}", *self.extra_args]
        output = subprocess.DEVNULL
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = output = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, env=self._environment(), stdout=output, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def wait_live(self, timeout: float = 60.0) -> None:
        import tritonclient.grpc as grpc

        client = grpc.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise UserError(f"tritonserver exited with code {self.process.returncode}; see {self.log_path or 'its log'}.")
            try:
                if client.is_server_live(client_timeout=5):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise UserError(f"tritonserver did not become live within {timeout:.0f} s; see {self.log_path or 'its log'}.")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # Triton unloads models and exits cleanly on SIGINT
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        if self._workdir:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> "LocalTriton":
        self.start()
        self.wait_live()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


SHM_REGION_PREFIX = "triton_python_backend_shm_region_"


def orphaned_shm_regions(shm: Path = Path("/dev/shm")) -> list[Path]:
    """The python backend's shared-memory regions that no live process maps: what a killed
    tritonserver left behind (it removes its own regions only when it stops cleanly)."""
    mapped = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except (OSError, ProcessLookupError):
            continue
        mapped.update(line.rsplit(" ", 1)[-1] for line in text.splitlines() if SHM_REGION_PREFIX in line)
    return [p for p in shm.glob(f"{SHM_REGION_PREFIX}*") if str(p) not in mapped]


def end_leftover_stubs(group: int) -> list[int]:
    """Kill the python-backend stubs of a tritonserver that is gone: killed with SIGKILL, the
    server cannot stop them, and some live on (re-parented, holding their memory and shared
    regions) for good. LocalTriton starts the server as a process-group leader, so its stubs are
    the stub processes of that group; nothing else is touched."""
    from scripts.processes import group_members, stub_model

    ended = []
    for pid in group_members(group):
        if stub_model(pid) is None:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10  # gone, with their mappings, before anything reuses their files
    while any(Path(f"/proc/{pid}").exists() for pid in ended) and time.monotonic() < deadline:
        time.sleep(0.1)
    return ended


def stop_process(pid: int, timeout: float = 30.0) -> bool:
    """Stop a detached tritonserver by its process id (SIGINT, then SIGKILL). False if it was gone."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(pid):
            return True
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def recorded_pid(pid_file: Path) -> int | None:
    """The process id a detached process of the stack recorded in `pid_file`, if it still runs."""
    if not Path(pid_file).is_file():
        return None
    pid = int(Path(pid_file).read_text())
    return pid if running(pid) else None


def running(pid: int) -> bool:
    """Alive, ours and not a zombie: a server exited but not yet reaped by the process that started
    it (a benchmark holding it as a child) has stopped, and another user's process that took a
    recorded id is not the one recorded."""
    try:
        os.kill(pid, 0)
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, PermissionError, FileNotFoundError):
        return False


if __name__ == "__main__":
    # `python -m scripts.local_triton layout DIR`: lay out the wheel's server in DIR (the CPU image
    # uses it so its tritonserver runs with the same command line as NVIDIA's images).
    if len(sys.argv) != 3 or sys.argv[1] != "layout":
        sys.exit("usage: python -m scripts.local_triton layout DIR")
    target = Path(sys.argv[2])
    layout_backends(target)
    (target / "bin").mkdir(parents=True, exist_ok=True)
    binary = target / "bin" / "tritonserver"
    if not binary.exists():
        binary.symlink_to(triton_distribution() / "bin" / "tritonserver")
    (target / "ld_library_path").write_text(library_path(target) + "\n")
    print(f"tritonserver laid out in {target}")
