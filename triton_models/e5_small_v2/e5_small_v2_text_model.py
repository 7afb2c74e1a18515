"""Triton python backend: strings -> "query: "/"passage: " prefix -> tokenize -> e5_small_v2 -> embedding.

Inputs: `text` BYTES [1] and optional `input_type` BYTES [1] ("query" default, or "passage").
Outputs: `embedding` FP32 [384]; `tokens` INT64 [1], the tokens the text took (prefix and special
tokens included), and `truncated` BOOL [1], whether it was cut at the token limit.
The tokenizer is the one published beside this file; nothing downloads at serve time.
"""
import os

import model_support  # published beside this file

model_support.use_pythonpath()

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

PREFIXES = {"query": "query: ", "passage": "passage: "}


class TritonPythonModel:
    def initialize(self, args):
        model = model_support.ModelArgs(args)
        # Truncation (max_length) and padding (to the longest) are set in the file by the builder.
        self.tokenizer = Tokenizer.from_file(os.path.join(model.folder, "tokenizer.json"))
        self.core = model.params["core_model"]

    def _texts(self, request):
        raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
        kinds_tensor = pb_utils.get_input_tensor_by_name(request, "input_type")
        kinds = kinds_tensor.as_numpy().reshape(-1) if kinds_tensor is not None else [b"query"] * len(raw)
        if len(raw) == 0:
            raise ValueError("'text' is empty: send at least one string")
        if len(kinds) != len(raw):
            raise ValueError(f"'input_type' has {len(kinds)} entries for {len(raw)} texts")
        texts = []
        for value, kind in zip(raw, kinds):
            try:
                text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
                kind = kind.decode("utf-8") if isinstance(kind, bytes) else str(kind)
            except UnicodeDecodeError:
                raise ValueError("'text' and 'input_type' must be UTF-8") from None
            if kind not in PREFIXES:
                raise ValueError(f"'input_type' must be 'query' or 'passage', got '{kind}'")
            texts.append(PREFIXES[kind] + text)
        return texts

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners = [], []
        for index, request in enumerate(requests):
            try:
                mine = self._texts(request)
            except ValueError as exc:
                responses[index] = model_support.error_response(pb_utils, exc)
                continue
            texts += mine
            owners += [index] * len(mine)
        if texts:
            try:
                embeddings, tokens, truncated = self._embed(texts)
            except RuntimeError as exc:
                for index in set(owners):
                    responses[index] = model_support.error_response(pb_utils, exc)
                return responses
            owners = np.asarray(owners)
            for index in set(owners.tolist()):
                mine = owners == index
                responses[index] = pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("embedding", embeddings[mine]), pb_utils.Tensor("tokens", tokens[mine, None]),
                    pb_utils.Tensor("truncated", truncated[mine, None])])
        return responses

    def _embed(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        answer = model_support.call_core(pb_utils, self.core, {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}, ["embedding"])
        tokens = np.array([sum(e.attention_mask) for e in encodings], dtype=np.int64)
        truncated = np.array([len(e.overflowing) > 0 for e in encodings], dtype=bool)
        return answer["embedding"].astype(np.float32), tokens, truncated
