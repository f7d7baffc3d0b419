"""Unlabelled text corpora: the pre-tokenizers and the three file formats."""

import json

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

from raydund.corpora import read_file
from raydund.corpora.text import pretokenizer, read_text, split_words
from raydund.errors import CorpusError, UserError

SENTENCE = "Prices rose 3.14% (to 1,000) in Zürich, didn't they? e-mail me!"


def test_default_pretokenizer_keeps_numbers_and_contractions_and_splits_punctuation():
    assert split_words(SENTENCE, pretokenizer()) == [
        "Prices", "rose", "3.14", "%", "(", "to", "1,000", ")", "in", "Zürich", ",", "didn't", "they", "?",
        "e-mail", "me", "!"]


def test_whitespace_and_custom_pretokenizers():
    assert split_words(SENTENCE, pretokenizer("whitespace")) == SENTENCE.split()
    assert split_words("a1 b22 c", pretokenizer(r"[a-z](\d*)")) == ["a1", "b22", "c"]  # groups: whole matches


@pytest.mark.parametrize("bad,match", [("(", "not a regular expression"), (r"\w*", "matches the empty string")])
def test_bad_pretokenizer_is_refused(bad, match):
    with pytest.raises(UserError, match=match):
        pretokenizer(bad)


def test_text_jsonl_parquet_and_arrow_give_the_same_sentences(tmp_path):
    sentences = [SENTENCE, "The dog barks .", "Ünïcödé  words\there"]
    (tmp_path / "s.txt").write_text(f"{sentences[0]}\n\n{sentences[1]}\n   \n{sentences[2]}\n", encoding="utf-8")
    (tmp_path / "s.jsonl").write_text("\n".join(json.dumps({"id": i, "body": s}) for i, s in enumerate(sentences)),
                                      encoding="utf-8")
    table = pa.table({"body": sentences, "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "s.parquet")
    feather.write_feather(table, tmp_path / "s.arrow")
    want = [split_words(s, pretokenizer()) for s in sentences]
    for name in ("s.txt", "s.jsonl", "s.parquet", "s.arrow"):
        got = read_file("text", tmp_path / name, field="body")
        assert got.column_names == ["sentence_id", "words"]
        assert got.column("words").to_pylist() == want and got.column("sentence_id").to_pylist() == [0, 1, 2]
    lines = read_text(tmp_path / "s.txt").column("lines").to_pylist()
    assert [ln[0] for ln in lines] == [1, 3, 5]  # file lines, blank ones skipped


def test_malformed_inputs_name_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: no string field 'text'"):
        read_text(tmp_path / "bad.jsonl")
    pq.write_table(pa.table({"n": [1]}), tmp_path / "n.parquet")
    with pytest.raises(CorpusError, match="no column 'text'"):
        read_text(tmp_path / "n.parquet")
    with pytest.raises(CorpusError, match="no such file"):
        read_text(tmp_path / "missing.txt")


def test_catalog_entries_of_text_need_no_labels():
    from raydund.corpora import CorpusSpec

    spec = CorpusSpec.from_dict({"name": "mine", "format": "text", "splits": {"train": {"path": "mine.jsonl"}},
                                 "options": {"field": "body", "pretokenize": "whitespace"}})
    assert spec.labels == () and spec.options["pretokenize"] == "whitespace"
    with pytest.raises(UserError, match="lacks 'labels'"):
        CorpusSpec.from_dict({"name": "x", "format": "conllu", "splits": {"train": {"path": "x"}}})
