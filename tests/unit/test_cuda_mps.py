"""The local mode's CUDA MPS daemon: when it runs, and the code around the control binary. The
binary comes with the NVIDIA driver and no GPU is here, so a stand-in script plays it (start
with -d, write the pid file, end on "quit"); the GPU machine ran the real one (docs/compiled-path.md)."""
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from converters.errors import UserError
from scripts.cuda_mps import MpsDaemon, MpsStop, mps_decision
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
if [ "$line" = quit ] && [ -z "$MPS_STAND_IN_STUBBORN" ]; then  # stubborn: a client still holds it
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
def test_the_daemon_runs_when_asked_for_on_cuda_and_the_host_runs_no_mps(setting, device, control, host_pipe, wanted,
                                                                         tmp_path):
    assert mps_decision(setting, device, control, host_pipe, default_pipe=str(tmp_path))[0] is wanted


def test_on_where_it_cannot_work_is_one_sentence_naming_the_setting(tmp_path):
    with pytest.raises(UserError, match="LOCAL_CUDA_MPS=on needs LOCAL_DEVICE=cuda"):
        mps_decision("on", "cpu", CONTROL, None, default_pipe=str(tmp_path))
    with pytest.raises(UserError, match="LOCAL_CUDA_MPS=on but nvidia-cuda-mps-control is not on PATH"):
        mps_decision("on", "cuda", None, None, default_pipe=str(tmp_path))


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
    assert stand_in.stop() == MpsStop(pid, True, stand_in.pipe_dir)
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
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # cuda:N is nvidia-smi's GPU N, as the settings mean it


def test_a_daemon_still_running_after_the_wait_is_said_so_and_keeps_its_pipe_folder(stand_in, monkeypatch):
    pid = stand_in.start()
    monkeypatch.setenv("MPS_STAND_IN_STUBBORN", "1")
    result = stand_in.stop(timeout_s=0.3)
    assert result == MpsStop(pid, False, stand_in.pipe_dir) and stand_in.pid() == pid
    assert (stand_in.pipe_dir / "nvidia-cuda-mps-control.pid").is_file()  # its clients still reach it
    assert "still running" in result.message and "stopped the" not in result.message


def test_down_says_the_daemon_is_still_running_even_when_quiet(stand_in, tmp_path, monkeypatch, capsys):
    import scripts.cuda_mps

    stack = LocalStack(load_settings(None, tmp_path, {"LOCAL_REPOSITORY": str(tmp_path / "repo")}))
    daemon = MpsDaemon(stack.state)
    pid = daemon.start()
    monkeypatch.setenv("MPS_STAND_IN_STUBBORN", "1")
    monkeypatch.setattr(scripts.cuda_mps, "STOP_WAIT_S", 0.3)
    try:
        stack.down(quiet=True)
        said = capsys.readouterr().out
        assert f"the CUDA MPS daemon (pid {pid}) is still running" in said and "stopped the CUDA MPS" not in said
        assert daemon.pipe_dir.is_dir()
        monkeypatch.delenv("MPS_STAND_IN_STUBBORN")
        stack.down()
        assert f"stopped the CUDA MPS daemon (pid {pid})" in capsys.readouterr().out
        assert not daemon.pipe_dir.exists()
    finally:
        if daemon.pid():
            subprocess.run(["kill", str(daemon.pid())], check=False)


def test_a_host_daemon_on_the_default_pipe_folder_is_used_as_it_is():
    with tempfile.TemporaryDirectory(dir="/tmp") as default:  # short: a socket path has 108 bytes
        assert mps_decision("on", "cuda", CONTROL, None, default_pipe=default)[0] is True
        (Path(default) / "control").write_text("")  # a file named control is no daemon
        assert mps_decision("on", "cuda", CONTROL, None, default_pipe=default)[0] is True
        os.unlink(Path(default) / "control")
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(str(Path(default) / "control"))
            wanted, why = mps_decision("on", "cuda", CONTROL, None, default_pipe=default)
        assert wanted is False and default in why


@pytest.mark.parametrize("problem", ["other-writable", "other-owner", "symlink"])
def test_a_pipe_folder_another_user_could_have_made_is_refused(stand_in, tmp_path, monkeypatch, problem):
    if problem == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        stand_in.pipe_dir.symlink_to(tmp_path / "elsewhere")
    else:
        stand_in.pipe_dir.mkdir(mode=0o700)
    try:
        if problem == "other-writable":
            stand_in.pipe_dir.chmod(0o777)
        elif problem == "other-owner":
            uid = os.getuid()
            monkeypatch.setattr(os, "getuid", lambda: uid + 1)
        with pytest.raises(UserError, match=r"^the CUDA MPS pipe folder .* is not a folder of this user that only "
                                            r"it may write \(owner uid \d+, mode .*\); remove it or set "
                                            r"LOCAL_CUDA_MPS=off\.$"):
            stand_in.start()
        assert not (tmp_path / "calls").exists()  # no daemon started in it
        assert stand_in.stop() is None  # nor one in it quit
    finally:
        if stand_in.pipe_dir.is_symlink():
            stand_in.pipe_dir.unlink()
        else:
            stand_in.pipe_dir.chmod(0o700)
            stand_in.pipe_dir.rmdir()


def test_the_pipe_folder_is_made_for_this_user_alone(stand_in):
    stand_in.start()
    info = stand_in.pipe_dir.stat()
    assert info.st_uid == os.getuid() and info.st_mode & 0o077 == 0
    stand_in.stop()
