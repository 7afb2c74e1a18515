"""What /proc says of tritonserver's processes (Linux): its descendants, which model a
python-backend stub serves, a process group's members. The soak, the local stack's clean-up and
the GPU placement readout all read them here."""
from __future__ import annotations

from pathlib import Path

STUB = b"triton_python_backend_stub"


def _read(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it, parents first."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            children = [int(c) for task in Path(f"/proc/{current}/task").iterdir()
                        for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        found.append(current)
        stack.extend(children)
    return found


def stub_model(pid: int) -> str | None:
    """The model a python-backend stub serves: `triton_python_backend_stub <repo>/<model>/<version>/model.py ...`."""
    args = (_read(pid, "cmdline") or b"").split(b"\0")
    first = args[1].decode(errors="replace") if len(args) > 1 else ""
    return Path(first).parent.parent.name if STUB in args[0] and first.endswith("model.py") else None


def label(pid: int, server: int) -> str:
    """`tritonserver`, the model a stub serves, or `pid N`."""
    return "tritonserver" if pid == server else stub_model(pid) or f"pid {pid}"


def group_members(group: int) -> list[int]:
    """The processes whose process group is `group`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == group:  # field 5: the process group
                members.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return members


def private_memory_mb(pid: int) -> float | None:
    """Private resident memory (anonymous and file pages: VmRSS without shared memory), MB."""
    status = _read(pid, "status")
    if status is None:
        return None
    fields = dict(line.split(":", 1) for line in status.decode().splitlines() if ":" in line)
    return sum(int(fields.get(key, "0 kB").split()[0]) for key in ("RssAnon", "RssFile")) / 1024.0
