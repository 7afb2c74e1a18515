import numpy as np
import pytest

from triton_models.eclair.pages import PAGE_HEIGHT, PAGE_WIDTH, Block, pad_page, parse_blocks
from triton_models.yolox.page_processing import INPUT_SIZE, PAD_VALUE, decode_image, fit, letterbox, nms, padded_batch, postprocess


def test_letterbox_keeps_aspect_pads_114_at_bottom_right_and_keeps_rgb():
    page = np.zeros((2048, 1024, 3), np.uint8)
    page[..., 0] = 200  # red in RGB
    tensor, ratio = letterbox(page)
    assert tensor.shape == (3, INPUT_SIZE, INPUT_SIZE) and tensor.dtype == np.uint8  # cast on the core's device
    assert ratio == 0.5
    assert tensor[0, 0, 0] == 200 and tensor[2, 0, 0] == 0  # RGB kept: the core turns it into the checkpoint's order
    assert np.all(tensor[:, :, 512:] == PAD_VALUE)


def test_letterbox_of_a_page_that_fits_is_the_page_and_padding():
    page = np.random.default_rng(0).integers(0, 256, (1024, 768, 3), dtype=np.uint8)
    tensor, ratio = letterbox(page)
    assert ratio == 1.0
    np.testing.assert_array_equal(tensor[:, :, :768], page.transpose(2, 0, 1))
    assert np.all(tensor[:, :, 768:] == PAD_VALUE)


def test_a_padded_batch_of_pages_of_every_shape_is_each_page_on_its_canvas_channels_first():
    rng = np.random.default_rng(2)
    pages = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1024, 791, 3), (700, 1024, 3), (1024, 1024, 3), (5, 9, 3))]
    batch = padded_batch(pages)
    assert batch.shape == (4, 3, INPUT_SIZE, INPUT_SIZE) and batch.dtype == np.uint8
    for slot, page in zip(batch, pages):  # the canvas as the wrapper made it before: full, copied, transposed
        canvas = np.full((INPUT_SIZE, INPUT_SIZE, 3), PAD_VALUE, dtype=np.uint8)
        canvas[:page.shape[0], :page.shape[1]] = page
        np.testing.assert_array_equal(slot, canvas.transpose(2, 0, 1))


def test_letterbox_refuses_non_rgb():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        letterbox(np.zeros((10, 10), np.uint8))


def test_a_page_fitted_first_is_letterboxed_to_the_same_canvas_with_the_same_normalised_boxes():
    """The ingest pipeline sends pages fitted on its raster workers: the served wrapper then only pads."""
    from scripts.ingest.sources import Page

    page = np.random.default_rng(1).integers(0, 256, (1280, 989, 3), dtype=np.uint8)  # a letter page, rasterised
    fitted = Page(1, page).fit_for_elements().elements_input
    assert fitted.shape == (1024, 791, 3) and fit(fitted)[0] is fitted  # fits: not resized again
    full, full_ratio = letterbox(page)
    again, again_ratio = letterbox(fitted)
    np.testing.assert_array_equal(full, again)
    assert (full_ratio, again_ratio) == (0.8, 1.0)
    decoded = np.zeros((21504, 8), np.float32)
    decoded[7, :6] = (400.0, 300.0, 200.0, 100.0, 0.9, 0.9)  # one confident table, in canvas pixels
    boxes_full = postprocess(decoded, full_ratio, page.shape[:2])[0]
    boxes_fitted = postprocess(decoded, again_ratio, fitted.shape[:2])[0]
    np.testing.assert_allclose(boxes_fitted, boxes_full, atol=1e-3)  # int() of 791.2 pixels: 0.03%
    assert Page(1, page).elements_input is page  # not fitted: the page itself


@pytest.mark.parametrize("height", [1122, 1138, 1151, 1183, 1195, 1243, 1249, 1259, 1280, 2048])
def test_a_fitted_page_is_not_resized_again(height):
    """Its limiting side is exactly the input size, whatever floating point makes of the ratio."""
    page = np.zeros((height, 866, 3), np.uint8)
    fitted, _ = fit(page)
    assert fitted.shape[0] == INPUT_SIZE and fit(fitted)[0] is fitted
    np.testing.assert_array_equal(letterbox(fitted)[0], letterbox(page)[0])


def test_a_small_page_is_sent_as_it_is():
    from scripts.ingest.sources import Page

    page = np.zeros((500, 400, 3), np.uint8)
    assert Page(1, page).fit_for_elements().elements_input is page  # the server enlarges it


def test_nms_suppresses_overlaps_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5) == [0, 2]
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.9) == [0, 1, 2]


def test_nms_with_classes_suppresses_within_a_class_only():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5, classes=np.array([0, 1, 0])) == [0, 1]


def test_postprocess_scores_thresholds_and_normalises_to_the_page():
    decoded = np.zeros((21504, 8), np.float32)
    decoded[:, 4] = 0.01  # objectness low everywhere
    decoded[10, 4], decoded[10, 6] = 0.9, 0.8  # one confident "chart"
    decoded[10, :4] = (84.0, 4.0, 32.0, 32.0)  # cx, cy, w, h in input pixels (decoded by the core)
    boxes, labels, scores = postprocess(decoded, ratio=0.5, page_hw=(2048, 1024), score_threshold=0.5)
    assert list(labels) == ["chart"] and scores[0] == pytest.approx(0.72)
    cx = 84.0 / 0.5
    assert boxes[0] == pytest.approx([(cx - 32) / 1024, 0.0, (cx + 32) / 1024, 40 / 2048], abs=1e-6)


def test_decode_image_rejects_garbage():
    with pytest.raises(ValueError, match="PNG/JPEG"):
        decode_image(b"definitely not a png")


def test_pad_page_scales_onto_a_white_canvas():
    canvas, scale = pad_page(np.zeros((640, 256, 3), np.uint8))
    assert canvas.shape == (PAGE_HEIGHT, PAGE_WIDTH, 3) and scale == 2.0
    assert canvas[0, 0, 0] == 0 and canvas[0, 600, 0] == 255


def test_pad_page_copies_a_page_that_fits_as_pillow_would():
    page = np.random.default_rng(3).integers(0, 256, (PAGE_HEIGHT, 990, 3), dtype=np.uint8)
    canvas, scale = pad_page(page)
    assert scale == 1.0
    from PIL import Image

    np.testing.assert_array_equal(canvas[:, :990], np.asarray(Image.fromarray(page).resize((990, PAGE_HEIGHT), Image.BICUBIC)))
    np.testing.assert_array_equal(canvas[:, :990], page)
    assert np.all(canvas[:, 990:] == 255)


def test_parse_blocks_maps_boxes_back_to_the_page():
    text = ("<x_10><y_20>Quarterly report<x_500><y_60><class_Title>"
            "<x_10><y_100>Revenue grew.\nCosts fell.<x_1000><y_1300><class_Text>")
    blocks = parse_blocks(text, scale=2.0, page_hw=(600, 480))
    assert blocks == [Block((5.0, 10.0, 250.0, 30.0), "Title", "Quarterly report"),
                      Block((5.0, 50.0, 480.0, 600.0), "Text", "Revenue grew.\nCosts fell.")]


def test_parse_blocks_ignores_text_outside_blocks():
    assert parse_blocks("no coordinates here <x_1>") == []
