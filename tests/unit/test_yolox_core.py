"""The served YOLOX cores: decoded in the graph, RGB in, the checkpoint's channel order inside."""
import json

import numpy as np
import pytest
import torch

from converters.errors import UserError
from third_party.yolox import build_yolox
from triton_models.registry import get
from triton_models.yolox.build import YOLOXOnPages, channel_order, demo_page, demo_yolox, uint8_io_config
from triton_models.yolox.page_processing import letterbox, postprocess


def _page() -> torch.Tensor:
    page = np.full((1024, 768, 3), 255, np.uint8)
    page[60:100, 40:700, 0] = 30  # coloured, so that a channel swap shows
    page[300:700, 60:700] = (200, 120, 40)
    return torch.from_numpy(letterbox(page)[0][None])


def test_the_core_decodes_the_grid_as_upstream_does():
    model = demo_yolox()
    raw = model(_page().float())  # the head undecoded
    decoded = YOLOXOnPages(demo_yolox())(_page())
    grid_x = torch.arange(128).repeat(128).float()  # stride 8: the first 128x128 anchors, row-major
    assert torch.allclose(decoded[0, :128 * 128, 0], (raw[0, :128 * 128, 0] + grid_x) * 8, atol=1e-3)
    assert torch.allclose(decoded[0, :, 2:4], torch.exp(raw[0, :, 2:4]) * torch.cat(
        [torch.full((n * n, 1), float(s)) for n, s in ((128, 8), (64, 16), (32, 32))]), rtol=1e-4)  # two forward
    # passes: a loaded CPU can pick other conv kernels for each (1.2e-5 apart seen), a wrong stride is 2x
    assert torch.equal(decoded[0, :, 4:], raw[0, :, 4:])


def test_a_bgr_checkpoint_sees_its_own_channel_order():
    torch.manual_seed(0)
    weights = build_yolox(0.33, 0.25, 3).eval()
    rgb = YOLOXOnPages(weights, "RGB")
    bgr = YOLOXOnPages(weights, "BGR")
    page = _page()
    assert torch.allclose(bgr(page), rgb(page.flip(1)))
    assert not torch.allclose(bgr(page), rgb(page))


def test_uint8_and_fp32_pages_give_the_same_answer():
    model = YOLOXOnPages(demo_yolox())
    page = _page()
    assert torch.equal(model(page), model(page.float()))
    assert json.loads(uint8_io_config())["inputs"][0]["dtype"] == "uint8"
    assert get("yolox").core_io["inputs"][0]["dtype"] == "float32"


def test_the_demo_finds_a_few_boxes_on_its_page():
    decoded = YOLOXOnPages(demo_yolox())(torch.from_numpy(letterbox(demo_page())[0][None]))[0].detach().numpy()
    scores = decoded[:, 4] * decoded[:, 5:].max(1)
    assert 5 <= int((scores >= 0.1).sum()) <= 200


def _found(model: torch.nn.Module, pages: torch.Tensor, ratio: float, fp16_rounded: bool) -> list[list[str]]:
    """Each page's labels after the served thresholds; `fp16_rounded`: every layer's output rounded
    to fp16 (what an fp16 model stores between layers), the rest in fp32."""
    hooks = [m.register_forward_hook(lambda _m, _i, out: out.half().float()) for m in model.modules()
             if fp16_rounded and not list(m.children())]
    try:
        with torch.no_grad():
            decoded = YOLOXOnPages(model)(pages).numpy()
    finally:
        for hook in hooks:
            hook.remove()
    return [list(postprocess(rows, ratio, demo_page().shape[:2])[1]) for rows in decoded]


def test_calibrated_norms_keep_what_a_deeper_demo_finds_in_fp16():
    """On an H200 an fp16 YOLOX-L scaled on the demo page alone found nothing where fp32 found
    boxes; with its norms calibrated on pages like the ones it sees, fp16 keeps them."""
    pixels, ratio = letterbox(demo_page())
    shifted = np.roll(pixels, 96, axis=1)  # a second page: the same blocks further down
    pages = torch.from_numpy(np.stack([pixels, shifted]))
    model = demo_yolox(depth=0.67, width=0.25, calibration_pages=pages)
    exact, rounded = _found(model, pages, ratio, False), _found(model, pages, ratio, True)
    counts = [(len(a), len(b)) for a, b in zip(exact, rounded)]
    assert all(1 <= a <= 500 for a, _ in counts), counts  # of 21,504 anchors (a 1024 page's 3 levels)
    assert all(abs(a - b) <= 0.1 * a for a, b in counts), counts  # boxes at the threshold may flip
    # (calibrated on the demo page alone, this model finds 15 boxes a page in fp32 and none rounded)


def test_channel_order_comes_from_exp_json_else_the_registry(tmp_path):
    checkpoint = tmp_path / "best_ckpt.pth"
    assert channel_order(checkpoint) == get("yolox").channel_order == "RGB"
    (tmp_path / "exp.json").write_text(json.dumps({"channel_order": "bgr"}))
    assert channel_order(checkpoint) == "BGR"
    (tmp_path / "exp.json").write_text(json.dumps({"channel_order": "BRG"}))
    with pytest.raises(UserError, match="channel_order 'BRG'; use RGB or BGR"):
        channel_order(checkpoint)
