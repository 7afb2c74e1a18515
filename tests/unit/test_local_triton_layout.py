"""The wheel's server laid out for this Python: its backends, and a library path that carries
libpython alone, not the folder of system libraries libpython sits in (which would shadow the
CUDA libraries PyTorch ships with inside the python-backend stub)."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from scripts.local_triton import layout_backends, library_path


def test_library_path_holds_libpython_but_not_its_system_folder(tmp_path):
    backends = layout_backends(tmp_path)
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    entries = library_path(tmp_path).split(os.pathsep)
    system_folder = sysconfig.get_config_var("LIBDIR")
    assert system_folder not in entries
    libpython = sysconfig.get_config_var("INSTSONAME")
    assert [p.name for p in Path(entries[1]).iterdir()] == [libpython]
    assert (Path(entries[1]) / libpython).resolve() == (Path(system_folder) / libpython).resolve()


def test_layout_twice_replaces_the_link(tmp_path):
    layout_backends(tmp_path)
    layout_backends(tmp_path)  # a lasting state folder is laid out again on every `up`
    assert len(list((tmp_path / "lib").iterdir())) == 1
