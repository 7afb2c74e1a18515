"""Triton python backend: ECLAIR on PyTorch. `image` UINT8 [1280,1024,3] (batched) -> `text` BYTES [1].

One text per page, always: a batch is never silently shortened (the original client dropped
pages). Runs on CUDA in fp16 where the instance or its `device` parameter names a GPU,
else on CPU in fp32.
"""
import os

import model_support  # published beside this file

# transformers imports scikit-learn and SciPy only for assisted decoding and detection losses,
# which ECLAIR never uses; hiding both keeps a SciPy built for another NumPy than the python
# stub's (NumPy 1) out of the server process.
model_support.use_pythonpath(hide=("sklearn", "scipy"))

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from eclair_runtime import EclairRuntime  # noqa: E402  (published beside this file)


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        self.runtime = EclairRuntime.for_serving(os.path.join(model.folder, "checkpoint"), model.params, model.device())

    def execute(self, requests):
        images, sizes = [], []
        for request in requests:
            batch = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            images.append(batch)
            sizes.append(batch.shape[0])
        try:
            texts = self.runtime(np.concatenate(images))
        except RuntimeError as exc:
            return [model_support.error_response(pb_utils, f"ECLAIR failed: {exc}") for _ in requests]
        if len(texts) != sum(sizes):  # never hand back fewer texts than pages
            return [model_support.error_response(pb_utils, f"ECLAIR returned {len(texts)} texts for {sum(sizes)} pages")
                    for _ in requests]
        responses, start = [], 0
        for size in sizes:
            chunk = texts[start:start + size]
            start += size
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("text", np.array([[t.encode("utf-8")] for t in chunk], dtype=object))]))
        return responses
