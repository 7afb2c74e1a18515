"""Triton python backend: pick a caption among an image's candidate texts.

Input `candidates` BYTES [-1] (one request per image). Candidates that are empty or have fewer
than `min_words` words are dropped; the rest are tokenized (max length 128) and scored by the
`deberta_large` core in chunks of its max batch; score = sigmoid(logit). Output `caption` is the
best candidate whose probability reaches `threshold` (default 0.5), else "", and `score` its
probability (0 when there is none).
"""
import os

import model_support  # published beside this file

model_support.use_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        params = model.params
        # Truncation and padding to max_length are set in the file by the builder.
        self.tokenizer = Tokenizer.from_file(os.path.join(model.folder, "tokenizer.json"))
        self.core = params["core_model"]
        self.core_max_batch = int(params["core_max_batch"])
        self.threshold = float(params.get("threshold", "0.5"))
        self.min_words = int(params.get("min_words", "1"))

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                caption, score = self._select(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("caption", np.array([caption.encode("utf-8")], dtype=object)),
                    pb_utils.Tensor("score", np.array([score], dtype=np.float32))]))
            except (ValueError, RuntimeError) as exc:
                responses.append(model_support.error_response(pb_utils, exc))
        return responses

    def _select(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "candidates").as_numpy().reshape(-1)
        if len(raw) == 0:
            raise ValueError("'candidates' is empty: send at least one candidate text")
        try:
            texts = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        except UnicodeDecodeError:
            raise ValueError("'candidates' must be UTF-8 text") from None
        kept = [t for t in texts if t.strip() and len(t.split()) >= self.min_words]
        if not kept:
            return "", 0.0
        probabilities = self._score(kept)
        best = int(np.argmax(probabilities))
        if probabilities[best] < self.threshold:
            return "", float(probabilities[best])
        return kept[best], float(probabilities[best])

    def _score(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        tokens = {"input_ids": np.array([e.ids for e in encodings]),
                  "attention_mask": np.array([e.attention_mask for e in encodings])}
        logits = []
        for start in range(0, len(texts), self.core_max_batch):
            chunk = slice(start, start + self.core_max_batch)
            answer = model_support.call_core(pb_utils, self.core, {
                "input_ids": tokens["input_ids"][chunk].astype(np.int64),
                "input_mask": tokens["attention_mask"][chunk].astype(np.float32)}, ["output"])
            logits.append(answer["output"].reshape(-1))
        return 1.0 / (1.0 + np.exp(-np.concatenate(logits).astype(np.float64)))
