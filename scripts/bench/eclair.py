"""ECLAIR's bench: decoding in tokens/s and pages/s, on pages whose lengths differ, on each raw path
and served, in one run, against the HBM floor of one decoder step.

Lengths are forced: each page gets a token limit drawn uniformly from `--eclair-lengths` (default
32..512, capped at the model's limit), and every path stops each page there (a random-weight
checkpoint rarely reaches EOS; a real one may stop earlier, and the counts are then the tokens
really made). The paths, on the same pages and limits:
  - `generate` (raw): Hugging Face's greedy `generate`, static batches of `slots` pages in arrival
    order; a batch decodes to its longest page, and each page counts only its own tokens;
  - `graph` (raw): the slot decoder with in-flight batching (eclair_inflight.py), in this process;
  - `served`: one request per page with the request parameter `max_new_tokens`, `2 x slots`
    clients at once, through Triton, connected before the clock starts. Its token counts are the
    graph path's for the same pages.
Every path first decodes the same warm-up pages (8 tokens each), untimed: first kernels, the
allocator's pools (served: the server process's own, pinned staging memory included).
The HBM floor: one step reads the decoder's weights once, the self KV cache of every slot up to its
mean position, and every slot's cross K/V; at the card's memory bandwidth that gives the floor's
tokens/s at `slots` pages in flight.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from converters.model_folder import VERSION, read_model_config
from converters.runners.model_support import load_beside
from triton_models.eclair.inflight import IDLE_WAIT_S

# Memory bandwidth (TB/s) by the name nvidia-smi reports, from NVIDIA's data sheets (SXM parts).
HBM_TBPS: tuple[tuple[str, float], ...] = (("H100 PCIe", 2.0), ("H100 NVL", 3.9), ("H100", 3.35), ("H200", 4.8),
                                           ("GH200", 4.0), ("B200", 8.0), ("A100", 2.0), ("L40S", 0.864), ("L4", 0.3))


def hbm_tbps(device_name: str) -> float | None:
    return next((tbps for fragment, tbps in HBM_TBPS if fragment in device_name), None)


@dataclass
class EclairPoint:
    path: str  # generate | graph | served
    pages: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def pages_per_s(self) -> float:
        return self.pages / self.seconds


def page_limits(count: int, low: int, high: int, cap: int, seed: int = 0) -> list[int]:
    """The forced length of each page: uniform in [low, high], at most the model's limit."""
    high, low = min(high, cap), min(low, cap)
    return [int(x) for x in np.random.default_rng(seed).integers(low, high + 1, count)]


def bench_pages(count: int, seed: int = 0) -> np.ndarray:
    """Noise pages on the contract's canvas: every page decodes differently."""
    from triton_models.eclair.pages import pad_page

    rng = np.random.default_rng(seed)
    return np.stack([pad_page(rng.integers(0, 256, (1100, 850, 3), dtype=np.uint8))[0] for _ in range(count)])


def hbm_floor_tokens_per_s(decoder, slots: int, mean_position: float, tbps: float | None) -> float | None:
    """Tokens/s if one step only read, once, the weights, the self KV cache of `slots` pages up to
    `mean_position` and their cross K/V (decoder: a SlotDecoder)."""
    if not tbps:
        return None
    itemsize = decoder.self_k.element_size()
    weights = sum(p.numel() * p.element_size() for p in decoder.core.parameters())
    weights += decoder.lm_head.weight.numel() * decoder.lm_head.weight.element_size()
    weights -= decoder.core.embed_tokens.weight.numel() * decoder.core.embed_tokens.weight.element_size()  # rows only
    layers, width = len(decoder.core.layers), decoder.heads * decoder.head_dim
    kv = 2 * layers * slots * width * itemsize * (mean_position + decoder.encoder_tokens)
    return slots / ((weights + kv) / (tbps * 1e12))


def _published(model_dir: Path, generator: str):
    """(runtime, inflight module) as the published model runs them, with `generator`."""
    config = read_model_config(model_dir)
    params = {k: v.string_value for k, v in config.parameters.items()}
    version = Path(model_dir) / VERSION
    runtime = load_beside(version, "eclair_runtime").EclairRuntime.for_serving(version / "checkpoint",
                                                                              {**params, "generator": generator})
    return runtime, load_beside(version, "eclair_inflight")


def raw_generate(runtime, pages: np.ndarray, limits: list[int], slots: int) -> EclairPoint:
    """Static batches: each decodes to its longest page; each page counts its own tokens."""
    import torch

    tokens, started = 0, time.monotonic()
    for start in range(0, len(pages), slots):
        batch, wanted = pages[start:start + slots], limits[start:start + slots]
        with torch.inference_mode():
            rows = runtime.generator.generate(runtime.pixel_values(batch), max(wanted), runtime.ids)
        for row, limit in zip(rows, wanted):
            new = [t for t in row[1:] if t != runtime.ids.pad]
            tokens += min(len(new), limit)
    _sync(runtime)
    return EclairPoint("generate", len(pages), tokens, time.monotonic() - started)


def raw_graph(runtime, inflight, pages: np.ndarray, limits: list[int]) -> tuple[EclairPoint, list[int], str]:
    """In-flight batching in this process; returns the point, each page's new tokens and where the
    scheduler's time went (inflight.SchedulerTimes)."""
    decoder = runtime.generator.reserve(runtime.max_new_tokens, runtime.ids)
    batcher = inflight.InflightBatcher(runtime, decoder, decoder.slots, runtime.ids.start)
    errors: list[str] = []
    # pages staged as the served model stages each request's (eclair_model.py, on Triton's thread:
    # not in the scheduler's time), before the clock starts
    jobs = [inflight.Job(runtime.staged(page[None]), lambda texts, error: errors.append(error) if error else None,
                         limit=limit) for page, limit in zip(pages, limits)]
    started = time.monotonic()
    for job in jobs:
        batcher.submit(job)
    while batcher.iterate():
        pass
    seconds = time.monotonic() - started
    if errors:
        raise RuntimeError(errors[0])
    counts = [len(job.tokens[0]) - 1 for job in jobs]  # new tokens: the start token is not made
    return EclairPoint("graph", len(pages), sum(counts), seconds), counts, batcher.times.summary()


def served(grpc_url: str, pages: np.ndarray, limits: list[int], counts: list[int], clients: int) -> EclairPoint:
    import tritonclient.grpc as grpc

    order = list(range(len(pages)))
    lock, errors = threading.Lock(), []
    connected = [grpc.InferenceServerClient(grpc_url) for _ in range(clients)]
    for client in connected:  # channels open before the clock, as a running client's are
        client.is_server_live()

    def client_loop(client):
        while True:
            with lock:
                if not order:
                    break
                index = order.pop(0)
            tensor = grpc.InferInput("image", [1, *pages.shape[1:]], "UINT8")
            tensor.set_data_from_numpy(pages[index:index + 1])
            try:
                client.infer("eclair", [tensor], parameters={"max_new_tokens": limits[index]}, client_timeout=600)
            except Exception as exc:  # the finding, reported below
                errors.append(str(exc))
        client.close()

    threads = [threading.Thread(target=client_loop, args=(client,)) for client in connected]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"served ECLAIR failed: {errors[0]}")
    return EclairPoint("served", len(pages), sum(counts), time.monotonic() - started)


def _sync(runtime) -> None:
    if str(runtime.device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def bench_eclair(grpc_url: str, model_dir: Path, count: int, lengths: tuple[int, int], out: Path,
                 device: str, with_generate: bool = True, host: str = "") -> dict:
    """Every path on the same pages and limits; the report (also written to out/eclair.json)."""
    graph, inflight = _published(model_dir, "graph")
    slots = graph.generator.decoder.slots
    limits = page_limits(count, lengths[0], lengths[1], graph.max_new_tokens)
    pages = bench_pages(count)
    warm = pages[:min(slots, count)]
    raw_graph(graph, inflight, warm, [8] * len(warm))  # untimed: first kernels, allocator
    graph_point, counts, scheduler = raw_graph(graph, inflight, pages, limits)
    points = [graph_point]
    decoder = graph.generator.decoder
    if with_generate:
        reference, _ = _published(model_dir, "pytorch")
        raw_generate(reference, warm, [8] * len(warm), slots)
        points.append(raw_generate(reference, pages, limits, slots))
        del reference  # its weights: the served model needs the memory
    warm_served = pages[:min(2 * slots, count)]  # as many as the timed run's clients stage at once
    served(grpc_url, warm_served, [8] * len(warm_served), [8] * len(warm_served), clients=2 * slots)  # untimed
    # the server's scheduler goes idle between the two; its log gives the warm-up a line of its own only
    # when its last report is older than its report interval (else the warm-up's steps join the run's line)
    time.sleep(2 * IDLE_WAIT_S)
    points.append(served(grpc_url, pages, limits, counts, clients=2 * slots))
    floor = hbm_floor_tokens_per_s(decoder, slots, float(np.mean(limits)) / 2, hbm_tbps(device))
    report = {"device": device, "host": host, "pages": count, "page_shape": list(pages.shape[1:]), "slots": slots,
              "lengths": {"low": min(limits), "high": max(limits), "mean": float(np.mean(limits)),
                          "how": "forced: each page's max_new_tokens drawn uniformly"},
              "hbm_floor_tokens_per_s": floor, "graph_scheduler_times": scheduler,
              "points": [{**asdict(p), "tokens_per_s": p.tokens_per_s, "pages_per_s": p.pages_per_s,
                          "of_hbm_floor": p.tokens_per_s / floor if floor else None} for p in points]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eclair.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
