import pytest

from knnlm_limits import corpus
from tests.support import SHARED_WIKITEXT


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_local_files_with_slices(tmp_path):
    f = _write(tmp_path, "all.txt", "".join(f"line {i}\n" for i in range(10)))
    splits = corpus.load_splits({"local_files": {"train": f, "valid": f + "[:0.3]", "test": f + "[0.3:]"}})
    assert len(splits["train"]) == 10
    assert splits["valid"] == [f"line {i}\n" for i in range(3)]
    assert splits["test"] == [f"line {i}\n" for i in range(3, 10)]


def test_relative_paths_resolve_against_base_dir(tmp_path):
    _write(tmp_path, "t.txt", "some text\n")
    splits = corpus.load_splits({"local_files": {s: "t.txt" for s in corpus.SPLITS}}, base_dir=tmp_path)
    assert splits["test"] == ["some text\n"]


def test_shared_wikitext_loads(wikitext_lines):
    valid = str(SHARED_WIKITEXT / "valid.txt")
    test = str(SHARED_WIKITEXT / "test.txt")
    splits = corpus.load_splits({"local_files": {"train": valid, "valid": test + "[:0.5]", "test": test + "[0.5:]"}})
    n_test = len((SHARED_WIKITEXT / "test.txt").read_text().splitlines())
    assert len(splits["valid"]) + len(splits["test"]) == n_test
    assert any("Homarus gammarus" in line for line in splits["train"])


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(corpus.CorpusError, match=r"corpus\.local_files\.valid.*nope\.txt"):
        corpus.load_splits({"local_files": {"train": _write(tmp_path, "a", "x\n"), "valid": "nope.txt", "test": "nope.txt"}})


def test_empty_split_is_an_error(tmp_path):
    full, empty = _write(tmp_path, "a", "text\n"), _write(tmp_path, "b", "\n \n")
    with pytest.raises(corpus.CorpusError, match="split 'test'.*is empty"):
        corpus.load_splits({"local_files": {"train": full, "valid": full, "test": empty}})


@pytest.mark.parametrize("spec", ["[0.7:0.2]", "[a:b]", "[0.1.2:]", "[:0.5", "[1.5:]", "[0.5]"])
def test_malformed_slice_names_the_key(tmp_path, spec):
    f = _write(tmp_path, "a", "x\n")
    with pytest.raises(corpus.CorpusError, match=r"corpus\.local_files\.valid.*slice"):
        corpus.load_splits({"local_files": {"train": f, "valid": f + spec, "test": f}})


def test_synthetic_corpus_is_seeded_and_wikitext_shaped():
    settings = {"train_lines": 200, "eval_lines": 30, "seed": 4}
    a, b = corpus.synthetic_splits(settings), corpus.synthetic_splits(settings)
    assert a == b and a != corpus.synthetic_splits({**settings, "seed": 5})
    assert [len(a[s]) for s in corpus.SPLITS] == [200, 30, 30]
    assert a["valid"] != a["test"]
    assert all(line.endswith("\n") for line in a["train"])
    assert any(line.startswith(" = ") for line in a["train"])  # headings, as in WikiText


def test_no_hub_and_no_local_files_names_the_setting():
    # conftest sets HF_DATASETS_OFFLINE=1, as on a machine without the hub.
    with pytest.raises(corpus.CorpusError, match=r"corpus\.local_files"):
        corpus.load_splits({"hub_id": "Salesforce/wikitext", "hub_config": "wikitext-2-raw-v1", "local_files": None})


def test_split_smaller_than_a_block_is_an_error(small_tokenizer, tmp_path):
    f = _write(tmp_path, "tiny.txt", "A few words only .\n")
    with pytest.raises(corpus.CorpusError, match=r"tiny\.txt.*fewer than one block.*block_size = 128"):
        corpus.tokenize_split(small_tokenizer, f, block_size=128)
    stream = corpus.tokenize_split(small_tokenizer, f, block_size=2)
    assert small_tokenizer.decode(stream.tolist()) == "A few words only .\n"
    assert len(corpus.tokenize_split(small_tokenizer, f, block_size=2, max_tokens=3)) == 3
