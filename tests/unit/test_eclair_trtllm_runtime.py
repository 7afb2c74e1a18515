"""ECLAIR's TensorRT-LLM generator, on CPU: the GPU it serves on, the decoder's `encoder_output`
and the skipped encoder's ids, checked against what upstream TensorRT-LLM's runner does with them
(NVIDIA/TensorRT-LLM tensorrt_llm/runtime/enc_dec_model_runner.py at 1.2.0rc3, commit 0249976:
`__init__` sets `mpi_rank() % torch.cuda.device_count()` current; `process_input` counts the first
id plus every id that is not the pad id and, with remove_input_padding, packs the ids to 1-D;
`generate` with `skip_encoder` then passes `prompt_embedding_table` on as `encoder_output`
unchanged for 1-D ids), and the generator's wiring with fakes of TensorRT-LLM standing in."""
import json
import sys
import types

import pytest
import torch

from triton_models.eclair.runtime import TokenIds
from triton_models.eclair.trtllm_runtime import (DECODER_FOLDER, VISUAL_ENGINE, DecoderSettings, decoder_settings,
                                                 encoder_input_ids, encoder_output, runner_lengths, serving_gpu,
                                                 check_encoder_lengths)


def upstream_skip_encoder_inputs(ids, table, pad, remove_input_padding=True):
    """What upstream's EncDecModelRunner.generate hands the decoder with the encoder skipped
    (process_input, then the skip_encoder branch), re-stated for CPU tensors."""
    lengths = 1 + (ids[:, 1:] != pad).sum(dim=1)
    if remove_input_padding:
        ids = torch.cat([torch.cat((row[:1], row[1:][row[1:] != pad])) for row in ids])
    return lengths, table if ids.dim() == 1 else table.unsqueeze(0)


# -- the GPU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, index", [("cuda", 0), ("cuda:0", 0)])
def test_the_gpu_is_explicit_and_cuda_means_the_first(device, index):
    assert serving_gpu(device, device_count=2) == index
    torch.device("cuda", serving_gpu(device, 2))  # an index torch.cuda.set_device accepts


def test_a_gpu_the_runner_would_not_use_is_refused_in_one_sentence():
    with pytest.raises(RuntimeError, match=r"given cuda:1, but TensorRT-LLM's EncDecModelRunner always runs on cuda:0"):
        serving_gpu("cuda:1", device_count=2)
    assert serving_gpu("cuda:1", device_count=2, runner_rank=1) == 1  # MPI rank 1 of 2: its own GPU
    assert serving_gpu("cuda:1", device_count=2, runner_rank=3) == 1  # rank % count, as upstream


def test_no_gpu_or_a_missing_one_is_refused():
    with pytest.raises(RuntimeError, match="needs a GPU, and this process sees none"):
        serving_gpu("cpu", device_count=0)
    with pytest.raises(RuntimeError, match="'cpu' names none"):
        serving_gpu("cpu", device_count=1)
    with pytest.raises(RuntimeError, match="cuda:3 does not exist here: this process sees 2"):
        serving_gpu("cuda:3", device_count=2)


# -- the decoder's encoder_output ------------------------------------------------------------------

def _engine_config(folder, dtype="bfloat16", remove_input_padding=True, encoder_hidden_size=1024):
    """The keys of trtllm-build's config.json that upstream read_config takes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "pretrained_config": {"architecture": "DecoderModel", "dtype": dtype, "encoder_hidden_size": encoder_hidden_size},
        "build_config": {"plugin_config": {"remove_input_padding": remove_input_padding}}}))
    return folder


@pytest.mark.parametrize("dtype, torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_the_features_go_packed_in_the_decoder_engines_dtype(tmp_path, dtype, torch_dtype):
    settings = decoder_settings(_engine_config(tmp_path, dtype, encoder_hidden_size=8))
    features = torch.arange(2 * 5 * 8, dtype=torch.float32).reshape(2, 5, 8)
    packed = encoder_output(features, settings)
    assert packed.shape == (10, 8) and packed.dtype == torch_dtype and packed.is_contiguous()
    assert torch.equal(packed[5].float(), features[1, 0].to(torch_dtype).float())  # page 1 follows page 0's tokens


def test_what_upstream_hands_the_decoder_is_the_engines_packed_layout(tmp_path):
    settings = decoder_settings(_engine_config(tmp_path, "bfloat16", encoder_hidden_size=8))
    features = torch.randn(3, 4, 8)
    ids = encoder_input_ids(3, 4, pad=1)
    lengths, handed = upstream_skip_encoder_inputs(ids, encoder_output(features, settings), pad=1)
    assert handed.shape == (3 * 4, 8) and handed.dtype == torch.bfloat16  # [-1, encoder_hidden_size], engine dtype
    assert lengths.tolist() == [4, 4, 4] and int(lengths.sum()) == handed.shape[0]


def test_an_engine_without_remove_input_padding_or_of_another_width_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="without remove_input_padding"):
        encoder_output(torch.zeros(2, 5, 8), decoder_settings(_engine_config(tmp_path / "a", remove_input_padding=False)))
    with pytest.raises(RuntimeError, match="gives 8 features per token.*encoder_hidden_size 1024"):
        encoder_output(torch.zeros(2, 5, 8), decoder_settings(_engine_config(tmp_path / "b")))
    with pytest.raises(RuntimeError, match="pretrained_config.dtype 'int8'"):
        decoder_settings(_engine_config(tmp_path / "c", dtype="int8"))


def test_settings_without_an_encoder_width_still_pack():
    packed = encoder_output(torch.zeros(2, 3, 4), DecoderSettings("float16", True, None))
    assert packed.shape == (6, 4) and packed.dtype == torch.float16


# -- the skipped encoder's ids -----------------------------------------------------------------------

@pytest.mark.parametrize("pad", [0, 1, 2, 50_000])
def test_the_runner_counts_every_visual_token_whatever_the_pad_id(pad):
    ids = encoder_input_ids(2, 1280, pad)
    assert ids.shape == (2, 1280) and ids.dtype == torch.int32  # [B, T]: the runner packs them itself
    assert not bool((ids == pad).any())
    lengths, _ = upstream_skip_encoder_inputs(ids, torch.zeros(2 * 1280, 4), pad)
    assert lengths.tolist() == [1280, 1280] == runner_lengths(ids, pad).tolist()


def test_nougats_zero_ids_would_collapse_a_page_with_pad_id_zero():
    zeros = torch.zeros((2, 1280), dtype=torch.int32)  # upstream's Nougat fill, with the demo checkpoint's pad id 0
    assert upstream_skip_encoder_inputs(zeros, None, pad=0)[0].tolist() == [1, 1]
    with pytest.raises(RuntimeError, match="with pad id 0, TensorRT-LLM would count 1 of the 1280 visual tokens"):
        check_encoder_lengths(zeros, pad=0)


@pytest.mark.parametrize("pad", [None, "1", True])
def test_a_checkpoint_without_an_integer_pad_id_is_refused(pad):
    with pytest.raises(RuntimeError, match="pad_token_id .* is not a token id"):
        encoder_input_ids(1, 4, pad)


# -- the generator's wiring, TensorRT-LLM faked ------------------------------------------------------

class FakeRunner:
    """Upstream EncDecModelRunner's side effects that matter here: its own set_device, its config."""
    made = []

    def __init__(self, cuda, dtype):
        cuda.set_device(0 % cuda.device_count())  # mpi_rank() % device_count(), rank 0
        self.decoder_model_config = types.SimpleNamespace(dtype=dtype)
        self.calls = []
        FakeRunner.made.append(self)

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        batch = kwargs["encoder_input_ids"].shape[0]
        return torch.tensor([[[7, 11, 2, 2]]] * batch)  # [batch, beams, tokens], eos 2


@pytest.fixture
def fake_trtllm(monkeypatch, tmp_path):
    current = {"device": None}

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:  # what torch itself refuses
            raise ValueError("Expected a torch.device with a specified index or an integer")
        current["device"] = device.index if isinstance(device, torch.device) else int(device)

    cuda = types.SimpleNamespace(device_count=lambda: 2, set_device=set_device, current_device=lambda: current["device"],
                                 Stream=lambda device: types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None),
                                 get_device_name=lambda index: f"fake GPU {index}")
    for name in ("device_count", "set_device", "current_device", "Stream", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))
    runtime = types.ModuleType("tensorrt_llm.runtime")
    runtime.Session = types.SimpleNamespace(from_serialized_engine=lambda data: "visual session")
    runtime.EncDecModelRunner = types.SimpleNamespace(
        from_engine=lambda name, folder, skip_encoder, stream: FakeRunner(torch.cuda, "bfloat16"))
    utils = types.ModuleType("tensorrt_llm._utils")
    utils.mpi_rank = lambda: 0
    package = types.ModuleType("tensorrt_llm")
    package.runtime, package._utils = runtime, utils
    for name, module in {"tensorrt": types.ModuleType("tensorrt"), "tensorrt_llm": package,
                         "tensorrt_llm.runtime": runtime, "tensorrt_llm._utils": utils}.items():
        monkeypatch.setitem(sys.modules, name, module)
    (tmp_path / VISUAL_ENGINE).write_bytes(b"engine")
    _engine_config(tmp_path / DECODER_FOLDER, "bfloat16", encoder_hidden_size=8)
    return tmp_path


def test_the_generator_serves_on_an_indexed_gpu_and_says_which(fake_trtllm, capsys):
    from triton_models.eclair.trtllm_runtime import TrtllmGenerator

    generator = TrtllmGenerator(fake_trtllm, "cuda")  # what the published `device` parameter used to be
    assert generator.device == torch.device("cuda", 0) and torch.cuda.current_device() == 0
    assert "serving on cuda:0 (fake GPU 0), decoder bfloat16" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="given cuda:1"):
        TrtllmGenerator(fake_trtllm, "cuda:1")


def test_the_generator_hands_the_runner_packed_features_and_countable_ids(fake_trtllm, monkeypatch):
    from triton_models.eclair.trtllm_runtime import TrtllmGenerator

    generator = TrtllmGenerator(fake_trtllm, "cuda:0")
    monkeypatch.setattr(generator, "_visual_features", lambda pixels: torch.randn(2, 5, 8))
    rows = generator.generate(torch.zeros(2, 3, 4, 4), 3, TokenIds(start=7, pad=0, eos=2))
    call = FakeRunner.made[-1].calls[-1]
    assert call["prompt_embedding_table"].shape == (10, 8) and call["prompt_embedding_table"].dtype == torch.bfloat16
    assert call["encoder_input_ids"].shape == (2, 5) and call["pad_token_id"] == 0
    assert runner_lengths(call["encoder_input_ids"], 0).tolist() == [5, 5]
    assert rows == [[7, 11, 2], [7, 11, 2]]


def test_a_runner_in_another_dtype_than_the_config_is_refused(fake_trtllm, monkeypatch):
    from triton_models.eclair.trtllm_runtime import TrtllmGenerator

    monkeypatch.setattr(sys.modules["tensorrt_llm.runtime"].EncDecModelRunner, "from_engine",
                        lambda name, folder, skip_encoder, stream: FakeRunner(torch.cuda, "float16"))
    with pytest.raises(RuntimeError, match="runs in float16, but its config.json says bfloat16"):
        TrtllmGenerator(fake_trtllm, "cuda")
