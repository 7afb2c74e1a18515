"""CUDA MPS for the local mode's GPU instances (LOCAL_CUDA_MPS=on; off by default).

Each python-backend instance is its own process with its own CUDA context, and a GPU time-slices
between contexts. Under an MPS control daemon the instances share one context and their kernels
overlap. Measured on one H100 (docs/results/h100/compiled/mps.md), four instances each:
- E5 at batch 256: 37.2k seq/s time-sliced, 42.6k under MPS; the CUDA graph replayed alone runs
  40.9k. Small kernels leave room that another process's kernels fill.
- YOLOX-L at batch 16: 423 pages/s time-sliced, 355 under MPS (raw 432). Large convolutions
  already fill the GPU, and interleaving them costs.
So it is a per-deployment choice, not a default.

The stack runs its own daemon with its own pipe folder: only processes given `environment()`
(the stack's Triton and its model processes) connect to it, and a daemon the host runs for
others (named by CUDA_MPS_PIPE_DIRECTORY, or listening in the default /tmp/nvidia-mps) is used
as it is, never doubled. The pipe folder's name is predictable, so one that another user made,
or that others may write, is refused. MPS clients on one GPU also share its fault domain: a
fatal GPU fault in one model process fails the others on that GPU until they are reloaded.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from converters.errors import UserError

CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"  # the control daemon writes it into its pipe folder
# Where a daemon started without CUDA_MPS_PIPE_DIRECTORY makes its pipes and sockets, and where CUDA
# clients without it look (https://docs.nvidia.com/deploy/topics/topic_5_2_2.html: "The default
# directory for these pipes and sockets is /tmp/nvidia-mps"); `control` is the daemon's socket.
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
STOP_WAIT_S = 20.0  # how long `stop` waits for the daemon to end after "quit"


def host_daemon_listens(pipe_dir: str) -> bool:
    """A daemon's `control` socket is in `pipe_dir` (the host runs MPS there)."""
    try:
        return stat.S_ISSOCK(os.stat(Path(pipe_dir) / "control").st_mode)
    except OSError:
        return False


def mps_decision(setting: str, device: str, control: str | None, host_pipe: str | None,
                 default_pipe: str = DEFAULT_PIPE_DIR) -> tuple[bool, str]:
    """(run the stack's MPS daemon, why) for LOCAL_CUDA_MPS=`setting` (off or on). `control` is the
    control binary's path (None: not installed); `host_pipe` the CUDA_MPS_PIPE_DIRECTORY the stack
    was started with, and a daemon listening in `default_pipe` the one the host runs where it is
    unset: the host runs MPS itself, and Triton uses it as it is."""
    if setting == "off":
        return False, "LOCAL_CUDA_MPS=off"
    if device != "cuda":
        raise UserError("LOCAL_CUDA_MPS=on needs LOCAL_DEVICE=cuda; set LOCAL_CUDA_MPS=off for CPU serving.")
    if host_pipe:
        return False, f"the host's MPS (CUDA_MPS_PIPE_DIRECTORY={host_pipe}) is used as it is"
    if host_daemon_listens(default_pipe):
        return False, f"the host's MPS daemon (listening in {default_pipe}) is used as it is"
    if control is None:
        raise UserError(f"LOCAL_CUDA_MPS=on but {CONTROL} is not on PATH; it comes with the NVIDIA driver's "
                        "utilities. Install them or set LOCAL_CUDA_MPS=off.")
    return True, "the model processes on each GPU share one CUDA context"


@dataclass(frozen=True)
class MpsStop:
    """What `MpsDaemon.stop` found: the daemon's pid and whether it ended within the wait."""
    pid: int
    stopped: bool  # False: still running, its pipe folder kept (its clients may still use it)
    pipe_dir: Path

    @property
    def message(self) -> str:
        if self.stopped:
            return f"stopped the CUDA MPS daemon (pid {self.pid})"
        return (f"the CUDA MPS daemon (pid {self.pid}) is still running after quit (a client still holds it), so "
                f"its pipe folder {self.pipe_dir} is kept; run `python -m scripts.stack down --mode local` again "
                "once its clients have ended.")


class MpsDaemon:
    """The stack's MPS control daemon: pipe folder short enough for a socket path (under the temp
    folder, named by a hash of the stack's state folder), logs in the state folder."""

    def __init__(self, state: Path) -> None:
        tag = hashlib.sha1(str(Path(state).resolve()).encode()).hexdigest()[:12]
        self.pipe_dir = Path(tempfile.gettempdir()) / f"doc-triton-mps-{tag}"
        self.log_dir = Path(state) / "mps-log"

    def environment(self) -> dict[str, str]:
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def _control(self, *args: str, command: str | None = None) -> subprocess.CompletedProcess:
        control = shutil.which(CONTROL)
        if control is None:
            raise UserError(f"{CONTROL} is not on PATH; it comes with the NVIDIA driver's utilities.")
        return subprocess.run([control, *args], input=command, env={**os.environ, **self.environment()},
                              capture_output=True, text=True, timeout=30)

    def pid(self) -> int | None:
        from scripts.local_triton import running

        try:
            pid = int((self.pipe_dir / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if running(pid) else None

    def _foreign_pipe_dir(self) -> str | None:
        """What is wrong with the pipe folder, None where it is this user's folder that no one else
        may write: its name is predictable, so another user could have made it first (and would
        then share, or own, our daemon)."""
        try:
            info = os.lstat(self.pipe_dir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            return f"owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}"
        return None

    def start(self) -> int:
        """Start the daemon (or keep the one this stack left running); returns its pid."""
        try:
            self.pipe_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except FileExistsError:  # not a folder: refused below
            pass
        if problem := self._foreign_pipe_dir():
            raise UserError(f"the CUDA MPS pipe folder {self.pipe_dir} is not a folder of this user that only it "
                            f"may write ({problem}); remove it or set LOCAL_CUDA_MPS=off.")
        running = self.pid()
        if running:
            return running
        self.log_dir.mkdir(parents=True, exist_ok=True)
        result = self._control("-d")
        deadline = time.monotonic() + 10
        while result.returncode == 0 and time.monotonic() < deadline:
            if pid := self.pid():
                return pid
            time.sleep(0.1)
        shutil.rmtree(self.pipe_dir, ignore_errors=True)
        log = self.log_dir / "control.log"
        detail = (result.stderr or result.stdout or (log.read_text(errors="replace") if log.is_file() else "")).strip()
        raise UserError(f"the CUDA MPS control daemon did not start ({detail or f'exit code {result.returncode}'}); "
                        f"see {self.log_dir}, or set LOCAL_CUDA_MPS=off.")

    def stop(self, timeout_s: float | None = None) -> MpsStop | None:
        """Ask the daemon to quit (it stops its server once Triton's processes are gone) and wait
        for it; None when none was running. Its pipe folder goes only once it has ended."""
        if self._foreign_pipe_dir():  # a folder `start` refuses holds no daemon of ours
            return None
        pid = self.pid()
        if pid is None:
            return None
        self._control(command="quit\n")
        deadline = time.monotonic() + (STOP_WAIT_S if timeout_s is None else timeout_s)
        while self.pid() and time.monotonic() < deadline:
            time.sleep(0.1)
        stopped = self.pid() is None
        if stopped:
            shutil.rmtree(self.pipe_dir, ignore_errors=True)
        return MpsStop(pid, stopped, self.pipe_dir)
