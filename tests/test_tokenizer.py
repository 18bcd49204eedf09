from transformers import AutoTokenizer

from knnlm_limits import tokenizer
from tests.conftest import needs_wikitext

pytestmark = needs_wikitext


def test_bpe_round_trip_and_autotokenizer(small_tokenizer, wikitext_lines, tmp_path):
    small_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(small_tokenizer) == 4096
    text = "".join(wikitext_lines[:40])
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text
    assert ids == small_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.eos_token == tokenizer.EOS and loaded.eos_token_id is not None


def test_encode_lines_concatenates(small_tokenizer):
    stream = tokenizer.encode_lines(small_tokenizer, ["a cat\n", "a dog\n"])
    assert small_tokenizer.decode(stream.tolist()) == "a cat\na dog\n"
