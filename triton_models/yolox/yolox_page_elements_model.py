"""Triton python backend: a page image -> letterbox (fit, padded_batch) -> yolox_uint8 (decoded anchors) -> score, NMS -> boxes.

Inputs (one of them per request): `image` BYTES [1] (PNG/JPEG) or `pixels` UINT8 [-1,-1,3].
Outputs: `boxes` FP32 [-1,4] normalised x1,y1,x2,y2 on the original page, `labels` BYTES [-1]
(table, chart, title), `scores` FP32 [-1]. Thresholds come from the config's parameters.
All requests of one execute() go to the core model in one batch. The NMS is class-aware and the
scores objectness x class, as nv-ingest's YOLOX client computes them from `yolox`.
"""
import model_support  # published beside this file

model_support.use_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from page_processing import decode_image, fit, padded_batch, postprocess  # noqa: E402  (published beside this file)


class TritonPythonModel:
    def initialize(self, args):
        params = model_support.ModelArgs(args).params
        self.core = params["core_model"]
        self.core_max_batch = int(params["core_max_batch"])
        self.score_threshold = float(params.get("score_threshold", "0.1"))
        self.iou_threshold = float(params.get("nms_iou_threshold", "0.5"))

    def _page(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "image")
        pixels = pb_utils.get_input_tensor_by_name(request, "pixels")
        if (encoded is None) == (pixels is None):
            raise ValueError("send exactly one of 'image' (PNG/JPEG bytes) or 'pixels' (uint8 HxWx3)")
        if encoded is not None:
            values = encoded.as_numpy().reshape(-1)
            if len(values) != 1:
                raise ValueError(f"'image' must hold one page per request, got {len(values)}")
            return decode_image(bytes(values[0]))
        array = pixels.as_numpy()
        return array[0] if array.ndim == 4 else array

    def execute(self, requests):
        responses = [None] * len(requests)
        pages = []
        for index, request in enumerate(requests):
            try:
                page = self._page(request)
                fitted, ratio = fit(page)
                pages.append((index, fitted, ratio, page.shape[:2]))
            except ValueError as exc:
                responses[index] = model_support.error_response(pb_utils, exc)
        for start in range(0, len(pages), self.core_max_batch):
            chunk = pages[start:start + self.core_max_batch]
            try:
                raw = self._infer(padded_batch([fitted for _, fitted, _, _ in chunk]))
            except RuntimeError as exc:
                for index, *_ in chunk:
                    responses[index] = model_support.error_response(pb_utils, exc)
                continue
            for (index, _, ratio, page_hw), output in zip(chunk, raw):
                boxes, labels, scores = postprocess(output, ratio, page_hw, self.score_threshold, self.iou_threshold)
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("boxes", boxes[None]),
                    pb_utils.Tensor("labels", np.array([l.encode() for l in labels], dtype=object).reshape(1, -1)),
                    pb_utils.Tensor("scores", scores[None])])
        return responses

    def _infer(self, batch):
        return model_support.call_core(pb_utils, self.core, {"input": batch}, ["output"])["output"]
