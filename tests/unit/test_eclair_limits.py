"""ECLAIR's generation limit never runs past the decoder's position embeddings."""
import json

import pytest

from converters.errors import UserError
from converters.model_folder import read_model_config
from triton_models.common import BuildOptions
from triton_models.eclair.build import max_new_tokens, read_options


def _max_new_tokens(folder, options):
    """As the build takes it: the option read (and checked) first, then held to the decoder."""
    return max_new_tokens(folder, options.demo, read_options(options)[0])


def _options(tmp_path, demo=False, **extra):
    return BuildOptions(checkpoint=tmp_path, repo=tmp_path / "repo", work_dir=tmp_path / "work", max_batch_size=1,
                        demo=demo, extra=extra)


def test_limit_follows_the_decoder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"decoder": {"max_position_embeddings": 512}}))
    assert _max_new_tokens(tmp_path, _options(tmp_path)) == 512
    assert _max_new_tokens(tmp_path, _options(tmp_path, demo=True)) == 64
    assert _max_new_tokens(tmp_path, _options(tmp_path, max_new_tokens="100")) == 100
    with pytest.raises(UserError, match="max_new_tokens 1000 exceeds .*max_position_embeddings \\(512\\)"):
        _max_new_tokens(tmp_path, _options(tmp_path, max_new_tokens="1000"))


def test_limit_of_a_large_decoder_is_4096(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"decoder": {"max_position_embeddings": 8192}}))
    assert _max_new_tokens(tmp_path, _options(tmp_path)) == 4096


def test_cudnn_attention_is_left_out_for_eclair_calls_only():
    """On CUDA, ECLAIR's generate runs without cuDNN's fused attention; the flag comes back after,
    so the process's other models (the bench process runs several) keep it."""
    import torch

    from triton_models.eclair.runtime import TorchGenerator

    runtime = object.__new__(TorchGenerator)  # the kernel choice alone, no checkpoint
    runtime.device = "cuda:0"
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with runtime._attention_kernels():
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    runtime.device = "cpu"
    with runtime._attention_kernels():
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_compile_encoder_option_is_on_or_off_and_reaches_the_served_config(tmp_path):
    """`--option compile_encoder=off` lands in the published config (the served runtime reads it
    there); anything but on/off is refused in one sentence before anything is built."""
    from triton_models.eclair.build import build, make_demo_checkpoint
    from triton_models.eclair.runtime import EclairRuntime

    checkpoint = make_demo_checkpoint(tmp_path / "checkpoints")
    options = BuildOptions(checkpoint=checkpoint, repo=tmp_path / "repo", work_dir=tmp_path / "work",
                           max_batch_size=2, demo=True, extra={"compile_encoder": "yes"})
    with pytest.raises(UserError, match="compile_encoder is 'yes', not on or off; set ECLAIR_COMPILE_ENCODER"):
        build(options)
    assert not (tmp_path / "repo").exists()
    options.extra["compile_encoder"] = "off"
    [model_dir] = build(options)
    params = {k: v.string_value for k, v in read_model_config(model_dir).parameters.items()}
    assert params["compile_encoder"] == "off" and params["generator"] == "graph"
    runtime = EclairRuntime.for_serving(model_dir / "1" / "checkpoint", params)
    assert runtime.generator.decoder.encoder_mode == "eager"  # on CPU: no graphs, nothing compiled
    with pytest.raises(ValueError, match="compile_encoder is 'yes', not on or off; rebuild"):
        EclairRuntime.for_serving(model_dir / "1" / "checkpoint", {**params, "compile_encoder": "yes"})


@pytest.mark.parametrize("generator, served", [("graph", 1), ("pytorch", 2)])
def test_the_graph_decoder_is_one_instance_whatever_instance_count_says(tmp_path, generator, served):
    """Its slots are its concurrency: a second instance on the same device would split the pages
    between two half-full decoders that both step. `generate` keeps INSTANCE_COUNT."""
    from triton_models.eclair.build import build, make_demo_checkpoint

    checkpoint = make_demo_checkpoint(tmp_path / "checkpoints")
    options = BuildOptions(checkpoint=checkpoint, repo=tmp_path / "repo", work_dir=tmp_path / "work",
                           max_batch_size=2, demo=True, instance_count=2, extra={"generator": generator})
    [model_dir] = build(options)
    assert [group.count for group in read_model_config(model_dir).instance_group] == [served]


@pytest.mark.parametrize("device, option, compiled", [("cuda:0", True, True), ("cuda:0", False, False),
                                                      ("cpu", True, False)])
def test_the_graph_generator_compiles_the_encoder_on_a_gpu_unless_told_not(monkeypatch, device, option, compiled):
    from triton_models.eclair import runtime

    seen = {}
    monkeypatch.setattr(runtime, "GraphGenerator", lambda *args, **kwargs: seen.update(kwargs))
    runtime.make_generator("graph", "folder", device, None, slots=16, compile_encoder=option)
    assert seen["compile_encoder"] is compiled
    assert seen["encoder_graph_batch"] == (4 if device.startswith("cuda") else 0)


def test_compile_encoder_is_on_when_absent_and_anything_but_on_or_off_is_named():
    from triton_models.eclair.runtime import parse_compile_encoder

    assert parse_compile_encoder(None, "x", "fix") is True  # the one default, wherever the setting is read
    assert parse_compile_encoder("on", "x", "fix") is True and parse_compile_encoder("off", "x", "fix") is False
    with pytest.raises(ValueError, match="^ECLAIR option compile_encoder is 'On', not on or off; set it$"):
        parse_compile_encoder("On", "ECLAIR option compile_encoder", "set it")
