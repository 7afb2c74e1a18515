"""Every command's own mistakes are one `error:` line and exit 1 (converters.errors.ArgumentParser;
embeddings_api keeps its own copy, as its image holds that package alone)."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("main_path, argv, says", [
    ("converters.cli", ["--max-batch-size", "abc"], "error: argument --max-batch-size: invalid int value: 'abc'"),
    ("triton_models.build", ["nosuch"], "error: argument model: invalid choice: 'nosuch'"),
    ("scripts.stack", ["up", "--mode", "nope"], "error: argument --mode: invalid choice: 'nope'"),
    ("embeddings_api.__main__", ["--triton-url", "triton:8001", "--port", "99999"], "error: --port 99999 must be from 1 to 65535"),
    ("embeddings_api.__main__", ["--triton-url", "not a url"],
     "error: --triton-url 'not a url' must be Triton's gRPC address as host:port"),
])
def test_a_mistake_on_the_command_line_is_one_line_and_exit_1(main_path, argv, says, capsys):
    import importlib

    with pytest.raises(SystemExit) as exited:
        importlib.import_module(main_path).main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.startswith(says) and err.count("\n") == 1, err
