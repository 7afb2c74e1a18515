"""How a published `python_compiled` model loads in a fresh process, as Triton's python stub loads it:
the seconds its runner takes to compile (and on a GPU capture) every bucket, and whether Inductor's
FX graph and AOT autograd caches were hit from the cache the builder published (`1/compile_cache/`)
or missed (then the load compiles everything again).

    python3 benchmarks/compiled_load_probe.py MODEL_FOLDER [--device cuda:0] [--cold]

MODEL_FOLDER is the model's folder in the repository (holding config.pbtxt and 1/). The device is
the first instance's, as the config gives it, unless --device names one. With --cold the published
cache is left out (an empty one is used): the load a cache miss costs.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--device", help="default: the config's device for instance 0")
    parser.add_argument("--cold", action="store_true", help="load without the published cache")
    args = parser.parse_args()
    version = args.folder / "1"
    sys.path.insert(0, str(version))  # the runner's model_support, published beside it
    spec = importlib.util.spec_from_file_location("compiled_model", version / "model.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    from google.protobuf import json_format, text_format
    from torch._dynamo.utils import counters
    from tritonclient.grpc import model_config_pb2

    config = json_format.MessageToDict(text_format.Parse((args.folder / "config.pbtxt").read_text(),
                                                         model_config_pb2.ModelConfig()),
                                       preserving_proto_field_name=True)
    parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    device = args.device or runner.model_support.instance_device(parameters, f"{config['name']}_0")
    scratch = Path(tempfile.mkdtemp(prefix="load-probe-"))
    folder = version
    try:
        if args.cold:  # a copy without the cache: the runner copies and uses what the folder holds
            folder = scratch / "1"
            shutil.copytree(version, folder, ignore=shutil.ignore_patterns(runner.CACHE_FOLDER))
        started = time.perf_counter()
        loaded = runner.Runner(str(folder), config, parameters, device)
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if loaded.cache_dir and Path(loaded.cache_dir).name.startswith("inductor-"):  # the runner's own copy
        shutil.rmtree(loaded.cache_dir, ignore_errors=True)
    hits = {key: value for group in ("inductor", "aot_autograd") for key, value in counters[group].items()
            if "cache" in key}
    print(json.dumps({"model": args.folder.name, "device": device, "cache": "none" if args.cold else "published",
                      "load_s": round(seconds, 1), "shapes": len(loaded.load_shapes), "cache_counters": hits}))


if __name__ == "__main__":
    main()
