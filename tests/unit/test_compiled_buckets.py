"""python_compiled's buckets: the shapes compiled (and captured) at load, and how a request maps
onto them; the sequence buckets only for models whose spec says padding is neutral."""
from converters.compiled_step import runner_module, sequence_buckets
from converters.io_config import parse_io_config
from converters.serve_backends import serve_backend
from triton_models.registry import get

runner = runner_module()


def test_batch_buckets_cover_every_batch_up_to_the_max_and_pad_one_to_two():
    assert runner.batch_buckets(64) == [2, 4, 8, 16, 32, 64]
    assert runner.batch_buckets(12) == [2, 4, 8, 12]
    assert runner.batch_buckets(1) == [1]
    for batch in range(1, 13):
        assert runner.round_up(batch, runner.batch_buckets(12)) >= batch
    assert runner.round_up(1, runner.batch_buckets(12)) == 2 and runner.round_up(13, runner.batch_buckets(12)) is None


def test_sequence_buckets_only_where_the_spec_says_padding_is_neutral():
    e5 = get("e5_small_v2")
    io = parse_io_config(e5.core_io_json)
    assert e5.pad_sequence and sequence_buckets(io, io.input_names, True) == "16,32,64,128,256,512"
    assert sequence_buckets(io, io.input_names, False) == ""
    deberta = parse_io_config(get("caption_classification").core_io_json)  # fixed 128 tokens
    assert sequence_buckets(deberta, deberta.input_names, True) == ""
    assert runner.parse_sizes("16, 32,,512") == [16, 32, 512]


def test_the_runner_reads_the_file_the_serve_backend_publishes():
    assert runner.PROGRAM_FILE == serve_backend("python_compiled").model_file
