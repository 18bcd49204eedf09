from transformers import AutoTokenizer

from knnlm_limits import corpus, tokenizer


def test_bpe_round_trip_and_autotokenizer(small_tokenizer, tmp_path):
    small_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(small_tokenizer)
    text = "".join(corpus.synthetic_lines(40, seed=[3, 3]))
    ids = loaded(text, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == text
    assert ids == small_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.eos_token == tokenizer.EOS and loaded.eos_token_id is not None


def test_bpe_is_trained_on_what_is_encoded(tmp_path):
    """The corpus is encoded line by line with its newlines; the BPE learns from the same
    lines, so the ubiquitous WikiText line end ' \\n' is one token, not two unseen bytes."""
    path = tmp_path / "train.txt"
    path.write_text("".join(corpus.synthetic_lines(600, seed=[1, 1])))
    tok = tokenizer.build({"pretrained": None, "vocab_size": 1000}, path)
    assert len(tok.tokenize(" \n")) == 1
    assert tok.decode(tokenizer.encode_lines(tok, corpus.read_lines(path)).tolist()) == path.read_text()


def test_encode_lines_concatenates(small_tokenizer):
    stream = tokenizer.encode_lines(small_tokenizer, ["a cat\n", "a dog\n"])
    assert small_tokenizer.decode(stream.tolist()) == "a cat\na dog\n"


def test_vocabulary_comparison_names_the_model_key(small_tokenizer, tmp_path):
    import pytest

    small_tokenizer.save_pretrained(tmp_path / "ours")
    small_tokenizer.save_pretrained(tmp_path / "same")
    tokenizer.check_same_vocabulary(tmp_path / "ours", tmp_path / "same", "overspecification.base_model")
    other = tokenizer.train_bpe(corpus.synthetic_lines(300, seed=[2, 2]), 800)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(tokenizer.TokenizerError, match=r"'overspecification\.base_model'.*tokenizer\.pretrained"):
        tokenizer.check_same_vocabulary(tmp_path / "ours", tmp_path / "other", "overspecification.base_model")


def test_load_without_autotokenizer_is_the_same_tokenizer(small_tokenizer, tmp_path):
    """tokenizer.load skips AutoTokenizer (and its torch import) for a plain tokenizer.json;
    what it returns encodes, decodes and applies a chat template exactly as AutoTokenizer's."""
    import subprocess
    import sys

    from tests.support import ROOT

    small_tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    small_tokenizer.save_pretrained(tmp_path)
    ours, auto = tokenizer.load(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    text = "".join(corpus.synthetic_lines(40, seed=[5, 5]))
    assert type(ours) is type(auto)
    assert ours(text, add_special_tokens=False)["input_ids"] == auto(text, add_special_tokens=False)["input_ids"]
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (auto.eos_token_id, auto.pad_token_id, len(auto))
    chat = [{"role": "user", "content": "who?"}, {"role": "assistant", "content": "Ana"}]
    assert ours.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
    probe = f"import sys; from knnlm_limits import tokenizer; tokenizer.load({str(tmp_path)!r}); print('torch' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert imported == "False"


def test_a_model_folders_tokenizer_is_left_to_autotokenizer(small_tokenizer, tmp_path, monkeypatch):
    """Next to a model's config.json, AutoTokenizer may pick the model type's own class."""
    import transformers

    small_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    calls = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append(a) or real(*a, **k))
    tokenizer.load(tmp_path)
    assert calls == [(str(tmp_path),)]
