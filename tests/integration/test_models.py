"""All four models built from (demo) checkpoints and served together by the real Triton."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.triton_config import read_config
from scripts.verify import verify_model
from tests.helpers import infer

from tests.integration.conftest import ALL_NAMES


def test_every_model_answers_its_golden_inputs(suite):
    client, repo, _ = suite
    for name in ALL_NAMES:
        result = verify_model(client, repo / name)
        assert result.ok, f"{name}: {result.detail}"


def test_everything_published_from_demo_checkpoints_is_labelled_demo(suite):
    _, repo, _ = suite
    for name in ALL_NAMES:
        assert json.loads((repo / name / "manifest.json").read_text())["demo"] is True, name


# --- E5 with real MiniLM weights -------------------------------------------------------------

def _e5_reference(folder: Path, texts: list[str]) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def test_e5_embeddings_match_pytorch_and_rank_the_related_passage_first(suite):
    client, _, work = suite
    query = "how do plants make food from sunlight"
    passages = ["Photosynthesis converts light energy, water and carbon dioxide into glucose in plant leaves.",
                "The stock market closed lower on Friday after a volatile week.",
                "A recipe for chocolate chip cookies with brown butter."]
    texts = np.array([[query]] + [[p] for p in passages], dtype=object)
    kinds = np.array([["query"]] + [["passage"]] * 3, dtype=object)
    served = infer(client, "e5_small_v2_text", {"text": texts, "input_type": kinds}, ["embedding"])["embedding"]
    reference = _e5_reference(work / "demo_checkpoints/e5_small_v2_demo",
                              ["query: " + query] + ["passage: " + p for p in passages])
    cosines = np.sum(served * reference, axis=1) / np.linalg.norm(served, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.999, cosines
    similarity = served[1:] @ served[0]
    assert int(np.argmax(similarity)) == 0, similarity
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_e5_input_type_defaults_to_query_and_changes_the_embedding(suite):
    client, _, _ = suite
    text = np.array([["solar panels"]], dtype=object)
    default = infer(client, "e5_small_v2_text", {"text": text}, ["embedding"])["embedding"]
    query = infer(client, "e5_small_v2_text", {"text": text, "input_type": np.array([["query"]], dtype=object)}, ["embedding"])["embedding"]
    passage = infer(client, "e5_small_v2_text", {"text": text, "input_type": np.array([["passage"]], dtype=object)}, ["embedding"])["embedding"]
    np.testing.assert_allclose(default, query, atol=1e-6)
    assert float(np.abs(default - passage).max()) > 1e-3


# --- Caption selection ------------------------------------------------------------------------

def test_caption_selection_matches_a_pytorch_reference(suite):
    from transformers import AutoTokenizer

    from triton_models.caption_classification.build import load_model

    client, _, work = suite
    folder = work / "demo_checkpoints/caption_demo"
    candidates = [f"candidate caption number {i} about a chart" for i in range(11)] + ["", "   ", "x"]
    out = infer(client, "caption_selection", {"candidates": np.array(candidates, dtype=object)}, ["caption", "score"])
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
    kept = [c for c in candidates if c.strip()]  # min_words 1: "x" stays, blanks go
    tokens = tokenizer(kept, padding="max_length", truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        logits = load_model(folder, [0])(tokens["input_ids"], tokens["attention_mask"].float()).reshape(-1)
    probabilities = torch.sigmoid(logits).numpy()
    best = int(np.argmax(probabilities))
    assert out["score"][0] == pytest.approx(probabilities[best], abs=1e-4)
    expected = kept[best] if probabilities[best] >= 0.5 else ""
    assert out["caption"][0].decode() == expected


def test_caption_selection_with_only_blank_candidates_scores_nothing(suite):
    client, _, _ = suite
    out = infer(client, "caption_selection", {"candidates": np.array(["", "  "], dtype=object)}, ["caption", "score"])
    assert out["caption"][0] == b"" and out["score"][0] == 0.0


def test_caption_selection_sends_concurrent_images_to_the_core_in_batches(served_suite, suite):
    """Several caption_selection instances per core instance, so that the core calls of images sent
    together meet in deberta_large's dynamic batcher; each answer is the one its image gets alone."""
    import time

    import tritonclient.http as http

    from triton_models.caption_classification.build import SELECTION_INSTANCES_PER_CORE_INSTANCE

    server, repo, _ = served_suite
    client = suite[0]
    selection, core = (read_config(repo / name / "config.pbtxt") for name in ("caption_selection", "deberta_large"))
    core_instances = sum(group.count * max(1, len(group.gpus)) for group in core.instance_group)
    assert selection.instance_group[0].count == SELECTION_INSTANCES_PER_CORE_INSTANCE * core_instances
    images = [np.array([f"figure {i}: a chart of sales", f"source: survey {i}", "notes"], dtype=object)
              for i in range(24)]
    alone = [infer(client, "caption_selection", {"candidates": c}, ["caption", "score"]) for c in images]

    def core_counts():
        stats = client.get_inference_statistics("deberta_large")["model_stats"][0]
        return stats["inference_count"], stats["execution_count"]

    def settled_counts():  # Triton counts a request a moment after its response is sent
        deadline, last = time.monotonic() + 30, None
        while (counts := core_counts()) != last:
            assert time.monotonic() < deadline, "Triton's statistics did not settle"
            last = counts
            time.sleep(0.3)
        return counts

    # Full batches sent to the core first hold it busy while the images' core calls arrive, so those
    # calls queue and can meet in the batcher (an idle core runs a lone call at once: its preferred
    # batch sizes include 1). A full batch merges with nothing: each is exactly one execution.
    full, length = core.max_batch_size, core.input[0].dims[-1]
    busy_inputs = []
    for name, dtype in (("input_ids", "INT64"), ("input_mask", "FP32")):
        tensor = http.InferInput(name, [full, length], dtype)
        tensor.set_data_from_numpy(np.ones((full, length), dtype=np.int64 if dtype == "INT64" else np.float32))
        busy_inputs.append(tensor)
    busy_batches = 3

    def send_together() -> int:
        """The full batches, then all images at once, each answer checked; the core executions the
        images took."""
        inferences, executions = settled_counts()
        together = http.InferenceServerClient(server.http_url, concurrency=busy_batches + len(images),
                                              network_timeout=120)
        try:
            busy = [together.async_infer("deberta_large", busy_inputs) for _ in range(busy_batches)]
            pending = []
            for candidates in images:
                tensor = http.InferInput("candidates", [len(candidates)], "BYTES")
                tensor.set_data_from_numpy(candidates)
                pending.append(together.async_infer("caption_selection", [tensor]))
            answers = [p.get_result() for p in pending]
            for call in busy:
                call.get_result()
        finally:
            together.close()
        for answer, expected in zip(answers, alone):
            assert answer.as_numpy("caption")[0] == expected["caption"][0]
            assert answer.as_numpy("score")[0] == pytest.approx(expected["score"][0], abs=1e-5)
        after_inferences, after_executions = settled_counts()
        assert after_inferences == inferences + 3 * len(images) + busy_batches * full  # 3 candidate rows an image
        return after_executions - executions - busy_batches

    # Whether two calls meet still depends on timing (the busy batches may end before the calls
    # arrive on a slow host), so up to three rounds are sent.
    rounds = []
    while len(rounds) < 3 and (not rounds or rounds[-1] >= len(images)):
        rounds.append(send_together())
    assert rounds[-1] < len(images), f"core executions per round of {len(images)} images: {rounds}"


# --- YOLOX page elements ----------------------------------------------------------------------

def test_page_elements_runs_several_wrapper_instances_and_each_page_gets_its_own_answer(
        served_suite, suite):
    """The wrapper's host work (letterbox, the core call, NMS) spreads over at least 4 instances,
    one per core instance beyond that; pages sent together each get the answer they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as http

    from triton_models.yolox.build import MIN_PAGE_INSTANCES, demo_page

    server, repo, _ = served_suite
    client = suite[0]
    wrapper, core = (read_config(repo / name / "config.pbtxt") for name in ("yolox_page_elements", "yolox_uint8"))
    core_instances = sum(group.count * max(1, len(group.gpus)) for group in core.instance_group)
    assert wrapper.instance_group[0].count == max(MIN_PAGE_INSTANCES, core_instances) > core_instances
    page = demo_page()
    pages = [page[: 500 + 60 * i, : 400 + 50 * i].copy() for i in range(8)]  # each its own size: its own boxes
    outputs = ["boxes", "labels", "scores"]
    alone = [infer(client, "yolox_page_elements", {"pixels": p[None]}, outputs) for p in pages]

    def sent_together(page):  # a client per thread: tritonclient's HTTP client is not shared between threads
        own = http.InferenceServerClient(server.http_url, network_timeout=120)
        try:
            return infer(own, "yolox_page_elements", {"pixels": page[None]}, outputs)
        finally:
            own.close()
    with ThreadPoolExecutor(len(pages)) as pool:
        together = list(pool.map(sent_together, pages))
    for one, other in zip(alone, together):
        assert one["boxes"].shape == other["boxes"].shape
        np.testing.assert_allclose(one["boxes"], other["boxes"], atol=1e-5)
        assert one["labels"].tolist() == other["labels"].tolist()


def test_page_elements_from_png_bytes_and_pixels_agree_with_the_reference(suite):
    from PIL import Image

    from triton_models.yolox.build import demo_page, load_model
    from triton_models.yolox.page_processing import letterbox, postprocess

    client, _, work = suite
    page = demo_page()[:700, :500].copy()
    encoded = io.BytesIO()
    Image.fromarray(page).save(encoded, format="PNG")
    from_bytes = infer(client, "yolox_page_elements", {"image": np.array([[encoded.getvalue()]], dtype=object)},
                       ["boxes", "labels", "scores"])
    from_pixels = infer(client, "yolox_page_elements", {"pixels": page[None]}, ["boxes", "labels", "scores"])
    np.testing.assert_allclose(from_bytes["boxes"], from_pixels["boxes"], atol=1e-6)
    tensor, ratio = letterbox(page)
    with torch.inference_mode():
        raw = load_model(work / "demo_checkpoints/yolox_demo/best_ckpt.pth")(torch.from_numpy(tensor[None])).numpy()[0]
    boxes, labels, scores = postprocess(raw, ratio, page.shape[:2])
    assert from_pixels["boxes"].shape == (1, len(boxes), 4)
    np.testing.assert_allclose(from_pixels["boxes"][0], boxes, atol=1e-4)
    np.testing.assert_allclose(from_pixels["scores"][0], scores, atol=1e-4)
    assert [l.decode() for l in from_pixels["labels"][0]] == list(labels)
    assert from_pixels["boxes"].min() >= 0.0 and from_pixels["boxes"].max() <= 1.0


# --- ECLAIR -----------------------------------------------------------------------------------

def test_eclair_returns_one_text_per_page(suite):
    from triton_models.eclair.pages import pad_page

    client, _, _ = suite
    pages = np.stack([pad_page(np.full((900, 700, 3), v, np.uint8))[0] for v in (255, 128, 0)])
    out = infer(client, "eclair", {"image": pages}, ["text"])["text"]
    assert out.shape == (3,)  # [B]: nv-ingest's client decodes each element (tests/integration/test_nv_ingest_clients.py)
    assert all(isinstance(t, bytes) for t in out)


def _eclair_grpc_call(url: str, pages: np.ndarray, limit: int | None = None, timeout_s: float | None = None):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    tensor = grpc.InferInput("image", list(pages.shape), "UINT8")
    tensor.set_data_from_numpy(pages)
    try:
        answer = client.infer("eclair", [tensor], parameters={"max_new_tokens": limit} if limit is not None else None,
                              client_timeout=timeout_s)
        return [t.decode() for t in answer.as_numpy("text")]
    finally:
        client.close()


def _noise_pages(count: int, seed: int) -> np.ndarray:
    from triton_models.eclair.pages import pad_page

    rng = np.random.default_rng(seed)
    return np.stack([pad_page(rng.integers(0, 256, (1100, 850, 3), dtype=np.uint8))[0] for _ in range(count)])


def test_eclair_answers_a_short_request_before_a_long_one_sent_with_it(served_suite):
    """In-flight batching through the real Triton: both requests share the decoder's slots; the
    short one (4 new tokens per page, the request parameter) is answered as soon as its page is
    done, with the text `generate` gives it."""
    import threading
    import time

    from triton_models.eclair.runtime import EclairRuntime

    server, repo, _ = served_suite
    long_pages, short_pages = _noise_pages(3, 1), _noise_pages(1, 2)
    done, answers, failed = {}, {}, {}

    def call(name, pages, limit=None):
        try:
            answers[name] = _eclair_grpc_call(server.grpc_url, pages, limit)
        except Exception as error:  # said below, not lost in the thread
            failed[name] = f"{type(error).__name__}: {error}"
        done[name] = time.monotonic()

    threads = [threading.Thread(target=call, args=("long", long_pages)),
               threading.Thread(target=call, args=("short", short_pages, 4))]
    for thread in threads:
        thread.start()
        time.sleep(0.5)  # the long one reaches the server first, by far
    for thread in threads:
        thread.join(300)
    assert not failed, failed
    assert done["short"] < done["long"], "the long request was answered before the short one sent after it"
    checkpoint = repo / "eclair" / "1" / "checkpoint"
    assert answers["short"] == EclairRuntime(checkpoint, max_new_tokens=4)(short_pages)
    limit = int(read_config(repo / "eclair" / "config.pbtxt").parameters["max_new_tokens"].string_value)
    assert answers["long"] == EclairRuntime(checkpoint, max_new_tokens=limit)(long_pages)


def test_eclair_request_cancelled_by_its_client_leaves_the_others_served(served_suite):
    from tritonclient.utils import InferenceServerException

    from triton_models.eclair.runtime import EclairRuntime

    server, repo, _ = served_suite
    with pytest.raises(InferenceServerException, match="(?i)deadline|timeout|cancel"):
        _eclair_grpc_call(server.grpc_url, _noise_pages(4, 3), timeout_s=0.3)
    page = _noise_pages(1, 4)
    assert _eclair_grpc_call(server.grpc_url, page, limit=6) == EclairRuntime(repo / "eclair" / "1" / "checkpoint",
                                                                              max_new_tokens=6)(page)


@pytest.mark.parametrize("limit", [0, 100000, "many"])
def test_eclair_refuses_a_bad_token_limit_in_one_sentence(served_suite, limit):
    from tritonclient.utils import InferenceServerException

    server, _, _ = served_suite
    with pytest.raises(InferenceServerException, match="parameter 'max_new_tokens' must be an integer"):
        _eclair_grpc_call(server.grpc_url, _noise_pages(1, 5), limit=limit)


def test_bench_runs_eclair_raw_as_the_server_does(suite):
    from converters.model_folder import Golden
    from scripts.bench.raw import RawModel

    client, repo, _ = suite
    feeds = Golden.read(repo / "eclair").tiled_inputs(2)
    served = infer(client, "eclair", {"image": feeds["image"]}, ["text"])["text"].ravel().tolist()
    assert RawModel(repo / "eclair").run(feeds) == [t.decode() for t in served]


def test_eclair_manifest_states_the_precision_it_serves_at(suite):
    from triton_models.eclair.runtime import EclairRuntime

    _, repo, _ = suite
    manifest = json.loads((repo / "eclair" / "manifest.json").read_text())
    params = {k: v.string_value for k, v in read_config(repo / "eclair" / "config.pbtxt").parameters.items()}
    on_gpu = params["device"].startswith("cuda") and torch.cuda.is_available()
    assert manifest["precision"] == ("fp16" if on_gpu else "fp32")
    assert EclairRuntime.for_serving(repo / "eclair" / "1" / "checkpoint", params).precision == manifest["precision"]


# --- Bad requests: a clear error, and every model keeps serving ------------------------------

@pytest.mark.parametrize("model, feeds, fragment", [  # each message names the tensor (or the limit) and what is wrong
    ("e5_small_v2", {"input_ids": np.ones((1, 8), np.float32), "attention_mask": np.ones((1, 8), np.int64)},
     "inference input 'input_ids' data-type is 'FP32'"),
    ("e5_small_v2_text", {"text": np.array([], dtype=object).reshape(0, 1)}, "for inference input 'text'"),  # Triton's
    ("e5_small_v2_text", {"text": np.array([[b"\xff\xfe"]], dtype=object)}, "must be UTF-8"),
    ("e5_small_v2_text", {"text": np.array([["a"]], dtype=object), "input_type": np.array([["document"]], dtype=object)},
     "'input_type' must be 'query' or 'passage', got 'document'"),
    ("caption_selection", {"candidates": np.array([], dtype=object)}, "'candidates' is empty"),
    ("caption_selection", {"candidates": np.array([b"\xc3\x28"], dtype=object)}, "'candidates' must be UTF-8 text"),
    ("deberta_large", {"input_ids": np.ones((65, 128), np.int64), "input_mask": np.ones((65, 128), np.float32)},
     "batch-size must be <= 64"),
    ("yolox", {"input": np.ones((1, 3, 512, 512), np.float32)}, "unexpected shape for input 'input'"),
    ("yolox", {"input": np.ones((1, 3, 1024, 1024), np.uint8)}, "inference input 'input' data-type is 'UINT8'"),  # nv-ingest's contract is FP32
    ("yolox_uint8", {"input": np.ones((1, 3, 1024, 1024), np.float32)}, "inference input 'input' data-type is 'FP32'"),
    ("yolox_page_elements", {"image": np.array([[b"not an image"]], dtype=object)}, "'image' is not a decodable PNG/JPEG"),
    ("yolox_page_elements", {}, "request has 0 inputs"),  # Triton refuses it before the model sees it
    ("eclair", {"image": np.zeros((1, 1000, 1024, 3), np.uint8)}, "unexpected shape for input 'image'"),
    ("eclair", {"image": np.zeros((17, 1280, 1024, 3), np.uint8)}, "batch-size must be <= 16"),
])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(suite, model, feeds, fragment):
    from tritonclient.utils import InferenceServerException

    client, repo, _ = suite
    with pytest.raises(InferenceServerException) as info:  # the server's answer, not a client-side failure
        infer(client, model, feeds, [])
    assert fragment in str(info.value)
    for name in ALL_NAMES:
        assert client.is_model_ready(name), name
    assert verify_model(client, repo / "e5_small_v2_text").ok


def test_bench_eclair_measures_every_path_on_the_same_forced_lengths(served_suite, tmp_path):
    from scripts.bench.eclair import bench_eclair, page_limits

    server, repo, _ = served_suite
    report = bench_eclair(server.grpc_url, repo / "eclair", count=5, lengths=(2, 9), out=tmp_path, device="CPU")
    assert [p["path"] for p in report["points"]] == ["graph", "generate", "served"]
    limits = page_limits(5, 2, 9, cap=64)
    graph, generate, served = report["points"]
    assert graph["tokens"] <= sum(limits) and graph["tokens"] >= 5  # each page stops at its limit, or at EOS before
    assert served["tokens"] == graph["tokens"] and generate["tokens"] == graph["tokens"]  # token-identical paths
    assert all(p["pages"] == 5 and p["tokens_per_s"] > 0 and p["pages_per_s"] > 0 for p in report["points"])
    assert report["hbm_floor_tokens_per_s"] is None  # no GPU: no bandwidth to divide by
    assert " steps in " in report["graph_scheduler_times"] and "waiting for the step" in report["graph_scheduler_times"]
    assert (tmp_path / "eclair.json").is_file()
