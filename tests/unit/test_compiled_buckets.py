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


def test_every_variable_axis_gets_shapes_compiled_at_load_even_without_sequence_buckets():
    """A model built without --pad-sequence used to get no bucket at all: nothing compiled at load,
    every request compiling. Now each batch bucket is compiled for length 1 and the longest length
    (dynamic shapes: one graph for 2..longest), so the request path has nothing left to compile."""
    batches = runner.batch_buckets(8)
    assert runner.load_shapes(batches, [], True, longest=512) == [(2, 1), (2, 512), (4, 1), (4, 512), (8, 1), (8, 512)]
    # padded axes keep their buckets; no variable axis: the batch buckets alone
    assert runner.load_shapes([2, 4], [16, 32], True, longest=32) == [(2, 16), (2, 32), (4, 16), (4, 32)]
    assert runner.load_shapes([2, 4], [], False) == [(2, 0), (4, 0)]
    for m in (1, 2, 12, 64):  # every batch bucket at length 1 and at the longest length, nothing else
        for n in (1, 2, 7, 128):
            buckets = runner.batch_buckets(m)
            assert runner.load_shapes(buckets, [], True, longest=n) == [(b, length) for b in buckets
                                                                          for length in sorted({1, n})], (m, n)


def test_the_first_unpadded_length_is_no_other_size_of_the_inputs():
    """Dynamo gives equal sizes one symbol at the first compile ("duck sizing"): a length equal to a
    batch bucket or a fixed axis would tie the two, and a request where they differ would recompile."""
    assert runner.unpadded_lengths(64, {2, 4, 8}) == [1, 64]
    assert runner.unpadded_lengths(64, {2, 4, 8, 64}) == [1, 63]
    assert runner.unpadded_lengths(None, {2, 3, 4}) == [1, 5]  # no exported maximum: the smallest free length
    assert runner.unpadded_lengths(2, {2}) == [1, 2]  # no free length: every length is compiled
    assert runner.unpadded_lengths(1, {2}) == [1]
