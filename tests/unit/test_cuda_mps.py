"""The local mode's CUDA MPS daemon: when it runs, and the code around the control binary. The
binary comes with the NVIDIA driver and no GPU is here, so a stand-in script plays it (start
with -d, write the pid file, end on "quit"); the GPU machine ran the real one (README)."""
import os
import subprocess
from pathlib import Path

import pytest

from converters.errors import UserError
from scripts.cuda_mps import MpsDaemon, mps_decision
from scripts.local_triton import LocalTriton
from scripts.stack_settings import load_settings
from scripts.stacks.local import LocalStack

CONTROL = "/usr/bin/nvidia-cuda-mps-control"

STAND_IN = """#!/usr/bin/env bash
if [ "$1" = "-d" ]; then
    [ -n "$MPS_STAND_IN_FAILS" ] && { echo "$MPS_STAND_IN_FAILS" >&2; exit 1; }
    echo started >> "$MPS_STAND_IN_CALLS"
    nohup sleep 300 > /dev/null 2>&1 &
    echo $! > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
    echo "$CUDA_MPS_LOG_DIRECTORY" > "$CUDA_MPS_PIPE_DIRECTORY/log-folder"
    exit 0
fi
read -r line
if [ "$line" = quit ]; then
    kill "$(cat "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid")"
    rm "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
fi
"""


@pytest.mark.parametrize("setting,device,control,host_pipe,wanted", [
    ("on", "cuda", CONTROL, None, True),
    ("off", "cuda", CONTROL, None, False),
    ("off", "cpu", None, None, False),
    ("on", "cuda", CONTROL, "/tmp/nvidia-mps", False),  # the host's own MPS serves
])
def test_the_daemon_runs_when_asked_for_on_cuda_and_the_host_runs_no_mps(setting, device, control, host_pipe, wanted):
    assert mps_decision(setting, device, control, host_pipe)[0] is wanted


def test_on_where_it_cannot_work_is_one_sentence_naming_the_setting():
    with pytest.raises(UserError, match="LOCAL_CUDA_MPS=on needs LOCAL_DEVICE=cuda"):
        mps_decision("on", "cpu", CONTROL, None)
    with pytest.raises(UserError, match="LOCAL_CUDA_MPS=on but nvidia-cuda-mps-control is not on PATH"):
        mps_decision("on", "cuda", None, None)


def test_local_build_refuses_on_for_cpu_before_building(tmp_path):
    settings = load_settings(None, tmp_path, {"LOCAL_CUDA_MPS": "on", "LOCAL_DEVICE": "cpu",
                                              "LOCAL_REPOSITORY": str(tmp_path / "repo")})
    with pytest.raises(UserError, match="LOCAL_CUDA_MPS=on needs LOCAL_DEVICE=cuda"):
        LocalStack(settings).build(["e5_small_v2"])
    assert not (tmp_path / "local").exists()


def test_the_pipe_folder_fits_a_socket_path_from_any_state_folder(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name" * 8) / "local"
    daemon = MpsDaemon(deep)
    assert len(str(daemon.pipe_dir / "control")) < 100  # sockets allow 108 bytes
    assert MpsDaemon(deep).pipe_dir == daemon.pipe_dir != MpsDaemon(tmp_path / "other").pipe_dir


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-cuda-mps-control"
    script.write_text(STAND_IN)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPS_STAND_IN_CALLS", str(tmp_path / "calls"))
    daemon = MpsDaemon(tmp_path / "state")
    yield daemon
    pid = daemon.pid()
    if pid:  # a failed test must not leave the stand-in's sleep behind
        subprocess.run(["kill", str(pid)], check=False)


def test_start_gives_its_folders_keeps_a_running_daemon_and_stop_ends_it(stand_in, tmp_path):
    pid = stand_in.start()
    assert pid == stand_in.pid() and pid > 0
    assert (stand_in.pipe_dir / "log-folder").read_text().strip() == str(stand_in.log_dir)
    assert stand_in.start() == pid  # an `up` after an `up` keeps the daemon it started
    assert (tmp_path / "calls").read_text().count("started") == 1
    assert stand_in.stop() == pid
    assert stand_in.pid() is None
    assert stand_in.stop() is None  # nothing running: nothing to say
    assert not stand_in.pipe_dir.exists()


def test_a_daemon_that_cannot_start_is_named_with_its_reason(stand_in, monkeypatch):
    monkeypatch.setenv("MPS_STAND_IN_FAILS", "An instance of this daemon is already running")
    with pytest.raises(UserError, match="MPS control daemon did not start .An instance of this daemon is already "
                                        "running.; see .*or set LOCAL_CUDA_MPS=off"):
        stand_in.start()


def test_triton_gets_the_daemons_folders(tmp_path):
    server = LocalTriton(tmp_path, environment=MpsDaemon(tmp_path).environment())
    env = server._environment()
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(MpsDaemon(tmp_path).pipe_dir)
    assert Path(env["CUDA_MPS_LOG_DIRECTORY"]) == tmp_path / "mps-log"
