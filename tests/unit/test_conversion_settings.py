import re

import pytest

from converters.errors import UserError
from converters.conversion_settings import parse_int_list, parse_size


@pytest.mark.parametrize("text, expected", [
    ("1073741824", 1 << 30), ("1 << 30", 1 << 30), ("1<<32", 1 << 32), ("4GiB", 4 << 30), ("512MiB", 512 << 20),
    ("2G", 2 << 30), ("1.5GiB", 3 << 29),
])
def test_memory_pool_limit_forms(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "0", "4 parsecs", "-1"])
def test_bad_memory_pool_limit_names_the_flag(text):
    with pytest.raises(UserError, match="--memory-pool-limit"):
        parse_size(text)


def test_int_list():
    assert parse_int_list("1, 8,16", "--x") == (1, 8, 16)
    with pytest.raises(UserError, match="--preferred-batch-sizes"):
        parse_int_list("1,two", "--preferred-batch-sizes")


def _command(tmp_path, script, ckpt, **changes):
    """The seed command with some flags changed (value None: the flag removed)."""
    from tests.helpers import seed_command

    args = seed_command(ckpt, script, tmp_path / "work", tmp_path / "repo")
    for flag, value in changes.items():
        if flag in args:
            at = args.index(flag)
            del args[at:at + (3 if flag == "--input-size" else 2)]
        else:
            at = len(args)
        if value is not None:
            args[at:at] = [flag, *value] if isinstance(value, list) else [flag, value]
    return args


@pytest.mark.parametrize("flag, value, says", [
    ("--input-size", ["8", "none"], "--input-size sequence length must be a number (only the batch may be None)"),
    ("--max-queue-delay", "-5", "--max-queue-delay must be >= 0 microseconds, got -5"),
    ("--opset", "3", "--opset 3 is outside what the ONNX exporter writes (7 to 20); use 17, the default."),
    ("--triton-repo", "a_file", "is a file, or a file stands in its path"),
    ("--onnx-path", "a_file/model.onnx", "cannot be written: it is a folder, or a file stands where a folder"),
])
def test_bad_flags_are_named_before_any_work(small_deberta, tmp_path, capsys, flag, value, says):
    from converters.cli import main

    (tmp_path / "a_file").write_text("")
    value = [v if v != "a_file" else str(tmp_path / "a_file") for v in value] if isinstance(value, list) else \
        (str(tmp_path / value) if value.startswith("a_file") else value)
    args = _command(tmp_path, small_deberta.script, small_deberta.ckpt, **{flag: value})
    assert main(args) == 1
    assert says in capsys.readouterr().err
    assert not (tmp_path / "work").exists()  # nothing exported first


def test_a_script_that_fails_to_load_or_a_checkpoint_of_other_shapes_is_a_user_error(small_deberta, tmp_path, capsys):
    import torch

    from converters.loading import build_model

    broken = tmp_path / "broken_model.py"
    broken.write_text("import a_module_that_is_not_installed\n")
    with pytest.raises(UserError, match=r"--model-script-path .*broken_model.py failed to load \(ModuleNotFoundError: "):
        build_model(broken, "Model", small_deberta.ckpt)
    state = torch.load(small_deberta.ckpt, weights_only=True)
    name = next(k for k, v in state.items() if v.dim() == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(UserError, match=rf"--ckpt-path {other} does not match SmallDeberta: size mismatch for {re.escape(name)}"):
        build_model(small_deberta.script, "SmallDeberta", other)
