"""Contract tests for nv-ingest's 2024 ECLAIR and caption clients, which no package carries: each
test sends what the client sends and reads the answer the way it reads it, in the client's own
lines, written from NVIDIA/nv-ingest at commit 87950ff449b89274676c49ab6b2fad05dcd724a4:
  - src/nv_ingest/extraction_workflows/pdf/eclair_helper.py (the `eclair` call, lines 298-326);
  - src/nv_ingest/modules/transforms/image_caption_extraction.py (`_predict_caption`, lines 163-239).
"""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.helpers import infer



def _pages(count: int) -> np.ndarray:
    """What the client renders: pages thumbnailed into 1024x1280 and centred on white, NHWC uint8."""
    from triton_models.eclair.pages import pad_page

    pages = []
    for index in range(count):
        page = np.full((1100, 850, 3), 255, np.uint8)
        page[80 + 40 * index:120 + 40 * index, 80:700] = 0
        pages.append(pad_page(page)[0])
    return np.stack(pages)


def test_the_2024_eclair_client_decodes_one_text_per_page(served_suite, suite):
    server, _, _ = served_suite
    client, _, _ = suite
    batch = _pages(3)
    assert batch.shape == (3, 1280, 1024, 3)
    # eclair_helper.py, as written there:
    triton_client = grpcclient.InferenceServerClient(url=server.grpc_url)
    input_tensors = [grpcclient.InferInput("image", batch.shape, datatype="UINT8")]
    input_tensors[0].set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput("text")]
    query_response = triton_client.infer(model_name="eclair", inputs=input_tensors, outputs=outputs)
    text = query_response.as_numpy("text").tolist()
    text = [t.decode() for t in text]  # fails with AttributeError on a [B, 1] answer
    assert len(text) == len(batch)  # the client drops the whole batch otherwise
    triton_client.close()
    alone = [infer(client, "eclair", {"image": page[None]}, ["text"])["text"][0].decode() for page in batch]
    assert text == alone


def test_the_2024_caption_client_sends_40_rows_and_picks_the_selection_models_captions(served_suite, suite):
    """8 images x 5 candidates in one request (the client's default batch of 8 images), as the client
    tokenizes them: max_length 128, padded, `input_mask` as FP32. With a max batch of 8 the request
    would be refused, and the client would turn that into empty captions without a word."""
    from transformers import AutoTokenizer

    server, _, work = served_suite
    client, _, _ = suite
    tokenizer = AutoTokenizer.from_pretrained(str(work / "demo_checkpoints/caption_demo/tokenizer"), local_files_only=True)
    n_candidates = 5
    input_batch = [[f"Figure {i}: chart of sales by quarter", f"candidate {i} b", f"a table {i}", "", f"x{i}"]
                   for i in range(8)]
    # image_caption_extraction.py, `_predict_caption`, as written there:
    triton_client = grpcclient.InferenceServerClient(url=server.grpc_url)
    flattened_sentences = [sentence for batch in input_batch for sentence in batch]
    encoded_inputs = tokenizer(flattened_sentences, max_length=128, padding="max_length", truncation=True, return_tensors="np")
    input_ids = encoded_inputs["input_ids"].astype(np.int64)
    attention_mask = encoded_inputs["attention_mask"].astype(np.float32)
    infer_inputs = [grpcclient.InferInput("input_ids", input_ids.shape, "INT64"),
                    grpcclient.InferInput("input_mask", attention_mask.shape, "FP32")]
    infer_inputs[0].set_data_from_numpy(input_ids)
    infer_inputs[1].set_data_from_numpy(attention_mask)
    outputs = [grpcclient.InferRequestedOutput("output")]
    response = triton_client.infer(model_name="deberta_large", inputs=infer_inputs, outputs=outputs)
    output_data = response.as_numpy("output")
    triton_client.close()
    assert input_ids.shape == (40, 128) and output_data.shape == (40, 1)
    for i, batch in enumerate(input_batch):
        batch_output = output_data[i * n_candidates:(i + 1) * n_candidates]
        best_sentence = batch[int(np.argmax(batch_output))]
        # The selection model, given the same candidates, picks the same one (it drops the blank one).
        selected = infer(client, "caption_selection", {"candidates": np.array([c for c in batch], dtype=object)},
                         ["caption", "score"])
        kept = [c for c in batch if c.strip()]
        scores = output_data[i * n_candidates:(i + 1) * n_candidates].reshape(-1)[[j for j, c in enumerate(batch) if c.strip()]]
        expected = kept[int(np.argmax(scores))]
        assert best_sentence in (expected, "")  # nv-ingest's argmax over all five, blank included
        probability = 1 / (1 + np.exp(-scores.max()))
        assert selected["caption"][0].decode() == (expected if probability >= 0.5 else "")  # threshold 0.5
        assert selected["score"][0] == pytest.approx(probability, abs=1e-4)
