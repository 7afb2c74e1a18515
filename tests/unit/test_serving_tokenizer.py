"""The builder-written tokenizer.json tokenizes as AutoTokenizer does, with the tokenizers library alone."""
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from converters.errors import UserError
from triton_models.common import serving_tokenizer
from triton_models.e5_small_v2.build import make_demo_checkpoint

TEXTS = ["query: how do I bake bread", "passage: " + "flour water yeast " * 60, "", "Ünïcode — dashes"]


@pytest.mark.parametrize("pad_to_max_length", [False, True])
def test_matches_auto_tokenizer(tmp_path_factory, pad_to_max_length):
    folder = make_demo_checkpoint(tmp_path_factory.getbasetemp() / "minilm")
    tokenizer = Tokenizer.from_str(serving_tokenizer(folder, 64, pad_to_max_length))
    ours = tokenizer.encode_batch(TEXTS)
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    theirs = hf(TEXTS, truncation=True, max_length=64, padding="max_length" if pad_to_max_length else True)
    assert [e.ids for e in ours] == theirs["input_ids"]
    assert [e.attention_mask for e in ours] == theirs["attention_mask"]
    assert len(ours[1].ids) == 64  # truncated
    assert (len(tokenizer.encode_batch(TEXTS[:1])[0].ids) == 64) == pad_to_max_length  # padded to longest or to max


def test_tokenizer_without_pad_token_is_refused(tmp_path):
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(str(tmp_path))
    with pytest.raises(UserError, match="has no pad token"):
        serving_tokenizer(tmp_path, 8, False)
