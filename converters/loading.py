"""Load the user's model: a class from a script path, weights from a state_dict checkpoint."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import torch

from converters.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def import_model_class(script_path: Path, class_name: str) -> type:
    """Import `class_name` from the file at `script_path`.

    The module gets a private name derived from the path, so a script called e.g. `model.py`
    never clashes with an installed module, and its folder is not put on `sys.path`.
    """
    script_path = Path(script_path)
    if not script_path.is_file():
        raise UserError(f"--model-script-path {script_path} does not exist.")
    module_name = "_model_script_" + hashlib.sha1(str(script_path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, script_path)
    if spec is None or spec.loader is None:
        raise UserError(f"--model-script-path {script_path} is not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise UserError(f"--model-script-path {script_path} has a syntax error at line {exc.lineno}: {exc.msg}.") from None
    except Exception as exc:  # an import it needs, or its own top-level code, failed: the script's problem
        raise UserError(f"--model-script-path {script_path} failed to load ({type(exc).__name__}: {exc}); "
                        "run it with python to see where.") from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                       and v.__module__ == module_name)
        raise UserError(
            f"--model-class-name {class_name} is not a class in {script_path}; "
            f"its torch.nn.Module classes are: {', '.join(found) or 'none'}."
        )
    return cls


def load_state_dict(ckpt_path: Path) -> dict[str, torch.Tensor]:
    """Read a state_dict checkpoint safely (`weights_only=True`), unwrapping the usual keys."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise UserError(f"--ckpt-path {ckpt_path} does not exist.")
    try:
        data = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or non-weights pickles
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--ckpt-path {ckpt_path} is not a readable state_dict checkpoint ({first_line[:200]})."
        ) from None
    if isinstance(data, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(data.get(key), dict) and data[key] and all(isinstance(v, torch.Tensor) for v in data[key].values()):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(
            f"--ckpt-path {ckpt_path} holds no state_dict (a dict of tensors, possibly under "
            f"'state_dict' or 'model'); save it with torch.save(model.state_dict(), path)."
        )
    if all(k.startswith("module.") for k in data):  # saved from DataParallel / DDP
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def build_model(script_path: Path, class_name: str, ckpt_path: Path, device: str = "cpu") -> torch.nn.Module:
    """Construct the class with no arguments and load the checkpoint strictly."""
    cls = import_model_class(script_path, class_name)
    state_dict = load_state_dict(ckpt_path)
    try:
        model = cls()
    except TypeError as exc:
        raise UserError(f"--model-class-name {class_name} must be constructible with no arguments ({exc}).") from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"--model-class-name {class_name} is not a torch.nn.Module.")
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # names match but shapes do not ("size mismatch for ...")
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4] if line.strip()) or str(exc)
        raise UserError(f"--ckpt-path {ckpt_path} does not match {class_name}: {detail[:400]}") from None
    if result.missing_keys or result.unexpected_keys:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "") if keys else "none"
        raise UserError(
            f"--ckpt-path {ckpt_path} does not match {class_name}: missing keys {show(result.missing_keys)}; "
            f"unexpected keys {show(result.unexpected_keys)}."
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA GPU is visible to PyTorch; use --device cpu.")
    return model.to(device).eval()
