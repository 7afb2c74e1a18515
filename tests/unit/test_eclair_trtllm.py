import json

import pytest

from converters.errors import UserError
from triton_models.eclair.trtllm import encoder_tokens, plan


def _checkpoint(tmp_path, encoder, decoder=None, generation=None):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vision-encoder-decoder", "encoder": encoder,
                                                      "decoder": decoder or {"max_position_embeddings": 4096}}))
    if generation:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    return tmp_path


SWIN = {"model_type": "donut-swin", "image_size": [1280, 1024], "patch_size": 4, "depths": [2, 2, 14, 2], "embed_dim": 128}


def test_swin_encoder_tokens_at_eclair_resolution():
    assert encoder_tokens(SWIN) == ((1280, 1024), 40 * 32, 1024)


def test_vit_encoder_has_a_cls_token():
    assert encoder_tokens({"model_type": "vit", "image_size": 224, "patch_size": 16, "hidden_size": 768}) == ((224, 224), 197, 768)


def test_unsupported_or_misaligned_encoders_are_refused():
    with pytest.raises(UserError, match="not supported"):
        encoder_tokens({"model_type": "convnext", "image_size": 224})
    with pytest.raises(UserError, match="multiple"):
        encoder_tokens({**SWIN, "image_size": [1000, 1024]})


def test_plan_follows_batch_size_generation_limit_and_gpu(tmp_path):
    result = plan(_checkpoint(tmp_path, SWIN, generation={"max_length": 3584}), batch_size=16, compute_capability="9.0")
    assert result.max_encoder_input_len == 1280 * 16 and result.max_new_tokens == 3584 and result.dtype == "bfloat16"
    command = result.decoder_build_command("ckpt/decoder", "engines/decoder")
    assert command[command.index("--max_batch_size") + 1] == "16"
    assert command[command.index("--max_seq_len") + 1] == "3585"
    assert command[command.index("--max_encoder_input_len") + 1] == str(1280 * 16)
    assert plan(tmp_path, 4, compute_capability="7.5").dtype == "float16"


def test_plan_refuses_impossible_settings(tmp_path):
    checkpoint = _checkpoint(tmp_path, SWIN, decoder={"max_position_embeddings": 1024})
    with pytest.raises(UserError, match="max_position_embeddings"):
        plan(checkpoint, 8, max_new_tokens=4096)
    with pytest.raises(UserError, match="ECLAIR_BATCH_SIZE"):
        plan(checkpoint, 0)


@pytest.mark.parametrize("layout", ["models/core/enc_dec", "enc_dec"])
def test_the_converter_script_is_found_in_old_and_new_tensorrt_llm_layouts(tmp_path, layout):
    from triton_models.eclair.trtllm import find_convert_script

    script = tmp_path / layout / "convert_checkpoint.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    assert find_convert_script(tmp_path) == script
    (tmp_path / "ckpt").mkdir()
    result = plan(_checkpoint(tmp_path / "ckpt", SWIN), 4, compute_capability="9.0")
    assert result.convert_command(tmp_path, tmp_path / "hf", tmp_path / "out")[1] == str(script)


def test_a_missing_converter_script_names_both_places_looked(tmp_path):
    from triton_models.eclair.trtllm import find_convert_script

    with pytest.raises(UserError, match="models/core/enc_dec/convert_checkpoint.py and enc_dec/convert_checkpoint.py"):
        find_convert_script(tmp_path)


def test_a_radio_encoder_is_refused_in_one_sentence():
    with pytest.raises(UserError, match="RADIO.*PyTorch runtime"):
        encoder_tokens({"model_type": "radio", "image_size": [1280, 1024]})


def test_the_token_limit_is_the_pytorch_runtimes(tmp_path):
    from triton_models.eclair.build import max_new_tokens

    checkpoint = _checkpoint(tmp_path, SWIN, decoder={"max_position_embeddings": 8192})
    assert plan(checkpoint, 2).max_new_tokens == max_new_tokens(checkpoint) == 4096


def _examples(folder, layout="models/core/enc_dec", version=None):
    script = folder / layout / "convert_checkpoint.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    if version:
        (folder / "TENSORRT_LLM_VERSION").write_text(f"{version} v{version}\n")
    return script


def test_without_examples_the_fetched_ones_are_found_before_old_images_app_folder(tmp_path):
    from triton_models.eclair.trtllm import find_convert_script

    fetched, app = tmp_path / "opt" / "tensorrt_llm_examples", tmp_path / "app" / "tensorrt_llm" / "examples"
    old = _examples(app, "enc_dec")
    assert find_convert_script(None, (fetched, app), version="0.10.0") == old  # an image before 24.07
    new = _examples(fetched, version="0.17.0.post1")
    assert find_convert_script(None, (fetched, app), version="0.17.0.post1") == new


def test_the_default_locations_are_the_fetch_folder_then_app():
    from triton_models.eclair.trtllm import EXAMPLES_LOCATIONS

    assert [str(p) for p in EXAMPLES_LOCATIONS] == ["/opt/tensorrt_llm_examples", "/app/tensorrt_llm/examples"]


def test_no_examples_anywhere_names_the_version_and_what_to_pass(tmp_path):
    from triton_models.eclair.trtllm import find_convert_script

    places = (tmp_path / "opt", tmp_path / "app")
    with pytest.raises(UserError, match=r"TensorRT-LLM 0\.17\.0's convert_checkpoint.py is in neither .*opt and .*app; "
                                        r"rebuild the overlay's image .* or pass --examples with the examples folder of "
                                        r"TensorRT-LLM 0\.17\.0\.$") as error:
        find_convert_script(None, places, version="0.17.0")
    assert str(error.value).count(". ") == 0  # one sentence
    with pytest.raises(UserError, match="no tensorrt_llm is installed here; pass --examples"):
        find_convert_script(None, places, version=None)


def test_examples_fetched_for_another_version_are_refused(tmp_path):
    from triton_models.eclair.trtllm import find_convert_script

    _examples(tmp_path / "opt", version="0.16.0")
    with pytest.raises(UserError, match="are 0.16.0's but TensorRT-LLM 0.17.0 is installed"):
        find_convert_script(None, (tmp_path / "opt",), version="0.17.0")


def test_the_engines_are_published_for_an_indexed_gpu():
    import inspect

    from triton_models.eclair.trtllm import SERVING_DEVICE, publish_repository
    from triton_models.eclair.trtllm_runtime import serving_gpu

    assert SERVING_DEVICE == "cuda:0" and inspect.signature(publish_repository).parameters["device"].default == SERVING_DEVICE
    assert serving_gpu(SERVING_DEVICE, device_count=1) == 0  # the GPU TensorRT-LLM's runner takes in its process
