"""nv-ingest's own client code, unmodified, against the served suite (the real Triton on CPU).

- YOLOX: `nv-ingest-api==25.4.2`'s `NimClient` with `YoloxPageElementsModelInterface` over gRPC
  (`nv_ingest_api/internal/primitives/nim/nim_client.py`, `.../model_interface/yolox.py`) against
  `yolox`. It calls `torchvision.ops.batched_nms`: tests/torchvision_nms.py supplies the operator.
- Embeddings: the `openai` package's `embeddings.create` and nv-ingest-api's own call
  (`nv_ingest_api/internal/transform/embed_text.py`, `_make_async_request`) against the
  OpenAI-compatible endpoint (embeddings_api).
The 2024 ECLAIR and caption clients, which no package carries, are in
test_nv_ingest_2024_contracts.py.
"""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from scripts.embeddings_service import MODEL_ID, post_json
from tests.helpers import infer



def _pages() -> list[np.ndarray]:
    """RGB pages 1024 high (nv-ingest's resize and ours are then both the identity, so both sides
    see the same pixels): a title bar and a table-like block, in colour, on white."""
    pages = []
    for width, tint in ((768, (200, 30, 30)), (1024, (30, 30, 200)), (640, (30, 160, 30))):
        page = np.full((1024, width, 3), 255, np.uint8)
        page[60:100, 40:width - 40] = tint
        page[300:700, 60:width - 60] = 200
        page[300:700:40, 60:width - 60] = 20
        pages.append(page)
    return pages


def _annotations(served: dict, labels) -> dict:
    """yolox_page_elements' answer for one page in nv-ingest's annotation form (before its business
    logic): label -> [[x1, y1, x2, y2, score]], normalised, rounded to 4 places as it rounds."""
    out = {label: [] for label in labels}
    for box, label, score in zip(served["boxes"][0], served["labels"][0], served["scores"][0]):
        out[label.decode()].append([round(float(x), 4) for x in (*box, score)])
    return out


def test_nv_ingest_yolox_client_gets_the_boxes_of_yolox_page_elements(served_suite, suite):
    from tests.torchvision_nms import install

    install()
    from nv_ingest_api.internal.primitives.nim.model_interface.yolox import (YOLOX_PAGE_IOU_THRESHOLD,
                                                                             YOLOX_PAGE_MIN_SCORE,
                                                                             YoloxPageElementsModelInterface)
    from nv_ingest_api.internal.primitives.nim.nim_client import NimClient

    from triton_models.yolox.page_processing import LABELS

    server, repo, _ = served_suite
    client, _, _ = suite
    params = {k: v["string_value"] for k, v in client.get_model_config("yolox_page_elements")["parameters"].items()}
    # The same thresholds on both sides: nv-ingest's (score 0.1, IoU 0.5) are the page model's defaults.
    assert float(params["score_threshold"]) == YOLOX_PAGE_MIN_SCORE
    assert float(params["nms_iou_threshold"]) == YOLOX_PAGE_IOU_THRESHOLD

    interface = YoloxPageElementsModelInterface(yolox_model_name="yolox-page-elements-v1")  # table, chart, title
    assert tuple(interface.class_labels) == LABELS
    nim = NimClient(interface, "grpc", (server.grpc_url, ""))
    pages = _pages()
    try:
        parsed = nim.infer({"images": [p.copy() for p in pages]}, model_name="yolox", stage_name="test")
    finally:
        nim.close()
    assert len(parsed) == len(pages)
    found = 0
    for page, answer in zip(pages, parsed):
        served = infer(client, "yolox_page_elements", {"pixels": page[None]}, ["boxes", "labels", "scores"])
        expected = interface.postprocess_annotations([_annotations(served, LABELS)], original_image_shapes=[page.shape])[0]
        assert sorted(answer) == sorted(expected)
        for label in expected:
            want, got = sorted(expected[label]), sorted(answer[label])
            assert len(got) == len(want), f"{label}: {len(got)} boxes from nv-ingest's client, {len(want)} expected"
            if want:
                np.testing.assert_allclose(np.array(got)[:, :4], np.array(want)[:, :4], atol=1.0)  # pixels
                np.testing.assert_allclose(np.array(got)[:, 4], np.array(want)[:, 4], atol=2e-4)
            found += len(want)
    assert found > 0, "the demo YOLOX found nothing on the test pages: the comparison would be empty"


def test_yolox_reports_a_power_of_two_max_batch_to_the_client(suite):
    client, _, _ = suite
    config = client.get_model_config("yolox")
    batch = int(config["max_batch_size"])
    assert batch & (batch - 1) == 0
    assert config["input"][0]["data_type"] == "TYPE_FP32"


# --- Embeddings through the OpenAI-compatible endpoint ------------------------------------------

def _triton_embeddings(client, texts: list[str], kind: str) -> np.ndarray:
    return infer(client, "e5_small_v2_text", {"text": np.array([[t] for t in texts], dtype=object),
                                             "input_type": np.array([[kind]] * len(texts), dtype=object)},
                 ["embedding"])["embedding"]


TEXTS = ["Photosynthesis turns light into chemical energy.", "Quarterly revenue by region, 2023.", "ok"]


@pytest.mark.parametrize("encoding", [None, "float", "base64"])
@pytest.mark.parametrize("kind", ["query", "passage"])
def test_openai_client_embeddings_equal_e5_small_v2_text(suite, embeddings_endpoint, encoding, kind):
    from openai import OpenAI

    client, _, _ = suite
    openai = OpenAI(api_key="not-used", base_url=f"http://{embeddings_endpoint}/v1")
    extra = {} if encoding is None else {"encoding_format": encoding}  # None: the client's default (base64)
    answer = openai.embeddings.create(input=TEXTS, model=MODEL_ID, extra_body={"input_type": kind}, **extra)
    if encoding == "base64":  # asked for explicitly, the client hands the string back as it came
        vectors = np.stack([np.frombuffer(base64.b64decode(row.embedding), dtype="<f4") for row in answer.data])
    else:
        vectors = np.array([row.embedding for row in answer.data], dtype=np.float32)
    np.testing.assert_allclose(vectors, _triton_embeddings(client, TEXTS, kind), atol=1e-6)
    assert [row.index for row in answer.data] == [0, 1, 2]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens > len(TEXTS) * 3


def test_nv_ingest_embedding_call_gets_e5_small_v2_text_passages(suite, embeddings_endpoint):
    from nv_ingest_api.internal.transform.embed_text import _make_async_request

    client, _, _ = suite
    # As nv-ingest's embedding stage calls it (its schema's defaults: float, passage, END).
    response = _make_async_request(TEXTS, "not-used", f"http://{embeddings_endpoint}/v1", MODEL_ID, "float", "passage",
                                   "END", False)
    assert response["info_msg"] is None
    vectors = np.array([row.embedding for row in response["embedding"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, _triton_embeddings(client, TEXTS, "passage"), atol=1e-6)


def test_models_lists_the_served_model(embeddings_endpoint):
    with urllib.request.urlopen(f"http://{embeddings_endpoint}/v1/models", timeout=10) as answer:
        listed = json.loads(answer.read())
    assert [m["id"] for m in listed["data"]] == [MODEL_ID]


@pytest.mark.parametrize("body, fragment", [
    ({"model": MODEL_ID, "input": []}, "at least one"),
    ({"model": MODEL_ID, "input": ["a", ""]}, "no empty string"),
    ({"model": MODEL_ID, "input": ["a"] * 5}, "at most 4"),
    ({"model": "text-embedding-3-small", "input": "a"}, "not served"),
    ({"model": MODEL_ID, "input": "a", "input_type": "document"}, "input_type"),
    ({"model": MODEL_ID, "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": MODEL_ID, "input": "a", "truncate": "START"}, "truncate"),
    ({"model": MODEL_ID, "input": " ".join(["word"] * 700), "truncate": "NONE"}, "token limit"),
    ({"model": MODEL_ID, "input": [1, 2, 3]}, "token ids"),
    (["not", "an", "object"], "JSON object"),
])
def test_bad_requests_get_openai_errors_and_the_service_keeps_serving(embeddings_endpoint, body, fragment):
    status, answer = post_json(f"http://{embeddings_endpoint}/v1/embeddings", body)
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error" and fragment in answer["error"]["message"]
    status, answer = post_json(f"http://{embeddings_endpoint}/v1/embeddings", {"model": MODEL_ID, "input": "still here"})
    assert status == 200 and len(answer["data"][0]["embedding"]) == 384


def test_malformed_json_is_a_400(embeddings_endpoint):
    request = urllib.request.Request(f"http://{embeddings_endpoint}/v1/embeddings", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    assert raised.value.code == 400 and "not valid JSON" in json.loads(raised.value.read())["error"]["message"]


def test_truncate_end_accepts_a_long_text(embeddings_endpoint):
    status, answer = post_json(f"http://{embeddings_endpoint}/v1/embeddings",
                               {"model": MODEL_ID, "input": " ".join(["word"] * 700), "truncate": "END"})
    assert status == 200 and answer["usage"]["prompt_tokens"] == 512


def test_without_triton_the_endpoint_answers_503_and_not_ready(tmp_path):
    import subprocess
    import sys

    from scripts.embeddings_service import is_ready
    from scripts.local_triton import free_port, port_in_use
    from tests.helpers import REPO_ROOT

    port, dead = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "embeddings_api", "--triton-url", f"127.0.0.1:{dead}", "--port",
                                str(port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if port_in_use(port):
                break
            import time

            time.sleep(0.1)
        assert not is_ready(f"127.0.0.1:{port}")
        status, answer = post_json(f"http://127.0.0.1:{port}/v1/embeddings", {"model": MODEL_ID, "input": "a"})
        assert status == 503 and answer["error"]["type"] == "service_unavailable", answer
        assert process.poll() is None  # still serving
    finally:
        process.terminate()
        process.wait(10)


def test_yolox_and_yolox_uint8_are_one_core_in_two_dtypes(suite):
    """nv-ingest's fp32 contract and the page model's uint8 fast path answer alike for the same page."""
    from triton_models.yolox.page_processing import letterbox

    client, _, _ = suite
    tensor, _ = letterbox(_pages()[0])
    as_float = infer(client, "yolox", {"input": tensor[None].astype(np.float32)}, ["output"])["output"]
    as_uint8 = infer(client, "yolox_uint8", {"input": tensor[None]}, ["output"])["output"]
    assert as_float.shape == (1, 21504, 8)
    np.testing.assert_allclose(as_float, as_uint8, rtol=1e-5, atol=1e-4)


def test_an_endpoint_started_before_triton_becomes_ready_once_triton_answers(served_suite):
    """As a pod that starts before Triton's does: the endpoint's first calls fail; once Triton is
    reachable (here a relay to the suite's Triton opens on the port it was given) it is ready and
    answers, without a restart."""
    import socket
    import subprocess
    import sys
    import threading
    import time

    from scripts.embeddings_service import is_ready
    from scripts.local_triton import free_port
    from tests.helpers import REPO_ROOT

    server, _, _ = served_suite
    port, triton_port = free_port(), free_port()
    process = subprocess.Popen([sys.executable, "-m", "embeddings_api", "--triton-url", f"127.0.0.1:{triton_port}",
                                "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    listener = socket.socket()
    try:
        deadline, status = time.monotonic() + 30, None
        while time.monotonic() < deadline and not is_ready(f"127.0.0.1:{port}"):
            status, _ = post_json(f"http://127.0.0.1:{port}/v1/embeddings", {"model": MODEL_ID, "input": "a"}) \
                if _listening(port) else (None, None)
            if status == 503:
                break
            time.sleep(0.2)
        assert status == 503, f"the endpoint did not answer 503 before Triton was there (last status {status})"
        assert not is_ready(f"127.0.0.1:{port}")
        target = server.grpc_url.split(":")
        listener.bind(("127.0.0.1", triton_port))
        listener.listen()
        threading.Thread(target=_relay, args=(listener, (target[0], int(target[1]))), daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not is_ready(f"127.0.0.1:{port}"):
            time.sleep(0.5)
        assert is_ready(f"127.0.0.1:{port}")
        status, answer = post_json(f"http://127.0.0.1:{port}/v1/embeddings", {"model": MODEL_ID, "input": "a"})
        assert status == 200 and len(answer["data"][0]["embedding"]) == 384
    finally:
        process.terminate()
        process.wait(10)
        listener.close()


def _listening(port: int) -> bool:
    from scripts.local_triton import port_in_use

    return port_in_use(port)


def _relay(listener, target) -> None:
    """A TCP relay: each connection to `listener` is piped both ways to `target`."""
    import socket
    import threading

    def pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(target)
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
