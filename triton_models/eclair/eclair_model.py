"""Triton python backend: ECLAIR on PyTorch. `image` UINT8 [1280,1024,3] (batched) -> `text` BYTES [1].

One text per page, always: a batch is never silently shortened (the original client dropped
pages). Runs on CUDA in fp16 where the instance or its `device` parameter names a GPU,
else on CPU in fp32.
"""
import json
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

# transformers imports scikit-learn and SciPy only for assisted decoding and detection losses,
# which ECLAIR never uses; hiding both keeps a SciPy built for another NumPy than the python
# stub's (NumPy 1) out of the server process.
for _unused in ("sklearn", "scipy"):
    sys.modules.setdefault(_unused, None)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from eclair_runtime import EclairRuntime  # noqa: E402  (published beside this file)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        self.runtime = EclairRuntime.for_serving(os.path.join(here, "checkpoint"), params, args.get("model_instance_kind"),
                                                 int(args.get("model_instance_device_id", 0)))

    def execute(self, requests):
        images, sizes = [], []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            images.append(batch)
            sizes.append(batch.shape[0])
        try:
            texts = self.runtime(np.concatenate(images))
        except RuntimeError as exc:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(f"ECLAIR failed: {exc}")) for _ in requests]
        if len(texts) != sum(sizes):  # never hand back fewer texts than pages
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"ECLAIR returned {len(texts)} texts for {sum(sizes)} pages")) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            chunk = texts[start:start + size]
            start += size
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("text", np.array([[t.encode("utf-8")] for t in chunk], dtype=object))]))
        return responses
