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
        [torch.full((n * n, 1), float(s)) for n, s in ((128, 8), (64, 16), (32, 32))]), rtol=1e-5)
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


def _largest_activation(model: torch.nn.Module, page: torch.Tensor) -> tuple[float, np.ndarray]:
    largest = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: largest.append(out.abs().max().item()))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        decoded = YOLOXOnPages(model)(page)[0].numpy()
    for hook in hooks:
        hook.remove()
    return max(largest), decoded


def test_unit_activations_keep_a_deeper_demo_within_fp16_and_its_boxes_few_of_the_anchors():
    pixels, ratio = letterbox(demo_page())
    page = torch.from_numpy(pixels[None])
    he_only, _ = _largest_activation(demo_yolox(depth=0.67, width=0.25), page)
    scaled, decoded = _largest_activation(demo_yolox(depth=0.67, width=0.25, unit_activations=True), page)
    # He init grows with depth on the raw 0..255 page (YOLOX-L reaches 2.4e7: inf in fp16)
    assert he_only > 1e3 and scaled < 100, (he_only, scaled)
    boxes, _, _ = postprocess(decoded, ratio, demo_page().shape[:2])
    assert 1 <= len(boxes) <= 500, len(boxes)  # of 21,504 anchors (the 3 levels of a 1024 page)


def test_channel_order_comes_from_exp_json_else_the_registry(tmp_path):
    checkpoint = tmp_path / "best_ckpt.pth"
    assert channel_order(checkpoint) == get("yolox").channel_order == "RGB"
    (tmp_path / "exp.json").write_text(json.dumps({"channel_order": "bgr"}))
    assert channel_order(checkpoint) == "BGR"
    (tmp_path / "exp.json").write_text(json.dumps({"channel_order": "BRG"}))
    with pytest.raises(UserError, match="channel_order 'BRG'; use RGB or BGR"):
        channel_order(checkpoint)
