"""Corpus readers on small files the tests write, their errors, fetching, and the real data."""

import gzip
import hashlib
from pathlib import Path

import pyarrow.compute as pc
import pytest
import yaml

from raydund.config import CATALOG_DIR, Settings
from raydund.corpora import CorpusSpec, SplitSource, load_spec, read_corpus, read_file
from raydund.corpora.fetch import locate
from raydund.errors import CorpusError, UserError

from conftest import SHARED_DATA


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def test_conll2000(tmp_path):
    path = write(tmp_path, "c.txt", "Confidence NN B-NP\nin IN B-PP\n\nHe PRP B-NP\n.\t. O\n\n".replace("\t", " "))
    t = read_file("conll2000", path)
    assert t.column("words").to_pylist() == [["Confidence", "in"], ["He", "."]]
    assert t.column("pos").to_pylist() == [["NN", "IN"], ["PRP", "."]]
    assert t.column("chunk").to_pylist() == [["B-NP", "B-PP"], ["B-NP", "O"]]
    assert t.column("sentence_id").to_pylist() == [0, 1]
    assert t.column("lines").to_pylist() == [[1, 2], [4, 5]]


def test_pmb_skips_comments_but_not_a_hash_token(tmp_path):
    rows = ["### header", "# newdoc id = p00/d0004", "A\tA\ta\tDIS\tnp/n\tO\t[]", "#\t#\t#\tSYM\tn\tO\t[]", ""]
    t = read_file("pmb", write(tmp_path, "p.conll", "\n".join(rows) + "\n"))
    assert t.column("words").to_pylist() == [["A", "#"]]
    assert t.column("semtag").to_pylist() == [["DIS", "SYM"]]
    assert t.column("ccg").to_pylist() == [["np/n", "n"]]


CONLLU = """# sent_id = 1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t0\troot\t_\t_
3.1\tgone\tgo\tVERB\tVBN\t_\t_\t_\t0:root\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_

"""


def test_conllu_skips_ranges_and_empty_nodes(tmp_path):
    t = read_file("conllu", write(tmp_path, "u.conllu", CONLLU))
    assert t.column("words").to_pylist() == [["I", "do", "n't", "know"]]
    assert t.column("upos").to_pylist() == [["PRON", "AUX", "PART", "VERB"]]
    assert t.column("xpos").to_pylist() == [["PRP", "VBP", "RB", "VB"]]
    assert t.column("lines").to_pylist() == [[3, 5, 6, 8]]


def test_neurox_txt_and_labels(tmp_path):
    write(tmp_path, "d.txt", "the dog barks\nhi\n")
    write(tmp_path, "d.labels", "DT NN VBZ\nUH\n")
    t = read_file("neurox", tmp_path / "d.txt", label="pos")
    assert t.column("words").to_pylist() == [["the", "dog", "barks"], ["hi"]]
    assert t.column("pos").to_pylist() == [["DT", "NN", "VBZ"], ["UH"]]


def test_glue_pairs_with_bom_and_regression(tmp_path):
    mrpc = write(tmp_path, "m.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tA b.\tC d e.\n",
                 encoding="utf-8")
    t = read_file("glue", mrpc, text_a="#1 String", text_b="#2 String", label="Quality", label_set=["0", "1"])
    assert t.column("words").to_pylist() == [["A", "b."]] and t.column("words_b").to_pylist() == [["C", "d", "e."]]
    assert t.column("label").to_pylist() == ["1"]
    sts = write(tmp_path, "s.tsv", "sentence1\tsentence2\tscore\nA\tB\t3.800\n")
    t = read_file("glue", sts, text_a="sentence1", text_b="sentence2", label="score", task="regression")
    assert t.column("label").to_pylist() == [3.8]


@pytest.mark.parametrize("fmt,name,text,options,line,message", [
    ("conll2000", "c.txt", "a DT B-NP\nb NN\n", {}, 2, "expected 3 columns"),
    ("pmb", "p.conll", "A\tA\ta\tDIS\tnp/n\tO\n", {}, 1, "expected 7 columns"),
    ("conllu", "u.conllu", "1\tI\tI\tPRON\n", {}, 1, "expected 10 tab-separated columns"),
    ("conll2000", "e.txt", "\n\n", {}, None, "no sentences"),
    ("glue", "g.tsv", "sentence\tlabel\nfine\t2\n", dict(text_a="sentence", label="label", label_set=["0", "1"]),
     2, "label '2' is not one of"),
    ("glue", "g.tsv", "sentence\tlabel\n \t1\n", dict(text_a="sentence", label="label"), 2, "empty sentence"),
    ("glue", "g.tsv", "s1\ts2\tlabel\nA b\t\t1\n", dict(text_a="s1", text_b="s2", label="label"), 2, "missing side"),
    ("glue", "g.tsv", "s1\ts2\tscore\nA\tB\thigh\n", dict(text_a="s1", text_b="s2", label="score", task="regression"),
     2, "not a number"),
    ("glue", "g.tsv", "sentence\tlabel\nA\t1\textra\n", dict(text_a="sentence", label="label"), 2, "expected 2"),
    ("glue", "g.tsv", "", dict(text_a="sentence", label="label"), None, "empty file"),
])
def test_bad_input_names_file_and_line(tmp_path, fmt, name, text, options, line, message):
    path = write(tmp_path, name, text)
    with pytest.raises(CorpusError, match=message) as err:
        read_file(fmt, path, **options)
    assert err.value.path == str(path) and err.value.line == line
    assert str(err.value).startswith(f"{path}:{line}:" if line else f"{path}:")


def test_neurox_count_mismatches(tmp_path):
    write(tmp_path, "d.txt", "the dog\nhi there\n")
    write(tmp_path, "d.labels", "DT NN\nUH\n")
    with pytest.raises(CorpusError, match="1 labels for 2 tokens") as err:
        read_file("neurox", tmp_path / "d.txt")
    assert err.value.line == 2 and err.value.path.endswith("d.labels")
    write(tmp_path, "d.labels", "DT NN\n")
    with pytest.raises(CorpusError, match="1 label lines for 2 sentences"):
        read_file("neurox", tmp_path / "d.txt")


def spec_for(tmp_path, files, fmt="conll2000", policy="error"):
    return CorpusSpec(name="toy", format=fmt, labels=("pos", "chunk"), unknown_labels=policy,
                      splits={k: SplitSource(path=str(v.relative_to(tmp_path))) for k, v in files.items()})


def test_unknown_dev_label_is_an_error_with_its_line(tmp_path):
    files = {"train": write(tmp_path, "train.txt", "a DT B-NP\n\n"),
             "dev": write(tmp_path, "dev.txt", "a DT B-NP\nb XX B-NP\n\n")}
    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path / "h"), "RAYDUND_DATA_MIRROR": str(tmp_path)})
    with pytest.raises(CorpusError, match="pos label 'XX' does not occur in train") as err:
        read_corpus(spec_for(tmp_path, files), ["dev"], settings)
    assert err.value.line == 2 and err.value.path.endswith("dev.txt")
    tables = read_corpus(spec_for(tmp_path, files, policy="warn"), None, settings)
    assert tables["dev"].column("pos").to_pylist() == [["DT", "XX"]]
    assert "lines" not in tables["dev"].column_names
    with pytest.raises(UserError, match="no split 'test'"):
        read_corpus(spec_for(tmp_path, files), ["test"], settings)


def test_fetch_mirror_first_then_download_with_checksum(tmp_path):
    payload = b"a DT B-NP\n\n"
    (tmp_path / "remote").mkdir()
    gz = tmp_path / "remote" / "train.txt.gz"
    gz.write_bytes(gzip.compress(payload))
    md5 = hashlib.md5(payload).hexdigest()
    settings = Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home")})
    got = locate(SplitSource(path="c/train.txt", url=gz.as_uri(), gz=True, md5=md5), settings)
    assert got == settings.home / "downloads" / "c" / "train.txt" and got.read_bytes() == payload
    mirror = tmp_path / "mirror" / "c"
    mirror.mkdir(parents=True)
    (mirror / "train.txt").write_bytes(payload)
    with_mirror = Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home"), "RAYDUND_DATA_MIRROR": str(tmp_path / "mirror")})
    assert locate(SplitSource(path="c/train.txt"), with_mirror) == mirror / "train.txt"
    # a wrong checksum leaves nothing behind
    with pytest.raises(UserError, match="checksum mismatch"):
        locate(SplitSource(path="c/other.txt", url=gz.as_uri(), gz=True, md5="0" * 32), settings)
    assert sorted(p.name for p in (settings.home / "downloads" / "c").iterdir()) == ["train.txt"]
    with pytest.raises(UserError, match="RAYDUND_DATA_MIRROR"):
        locate(SplitSource(path="c/x.txt", url=(tmp_path / "nope.gz").as_uri()), settings)


EXPECTED = {  # SOURCES.md: sentences / tokens per split
    "conll2000": {"train": (8936, 211727), "dev": (1844, 44352), "test": (2012, 47377)},
    "ud_english_ewt": {"train": (12544, 204577), "dev": (2001, 25147), "test": (2077, 25094)},
    "pmb_semtag": {"train": (7745, 50408), "dev": (1174, 7368), "test": (1053, 6821), "eval": (841, 5710)},
    "ptb_wsj_sample": {"all": (3914, 94084)},
    "sst2": {"train": (67349, None), "dev": (872, None)},
    "mrpc": {"train": (3668, None), "dev": (408, None)},
    "rte": {"train": (2490, None), "dev": (277, None)},
    "stsb": {"train": (5749, None), "dev": (1500, None)},
}


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="no data mirror beside the checkout")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_corpora_from_the_mirror(name):
    settings = Settings.from_env({"RAYDUND_HOME": "/tmp/raydund-unused", "RAYDUND_DATA_MIRROR": str(SHARED_DATA)})
    tables = read_corpus(load_spec(name), None, settings)
    for split, (sentences, tokens) in EXPECTED[name].items():
        assert tables[split].num_rows == sentences
        if tokens:
            assert pc.sum(pc.list_value_length(tables[split].column("words"))).as_py() == tokens


def test_every_catalog_entry_names_url_and_checksum():
    for path in (CATALOG_DIR / "corpora").glob("*.yaml"):
        entry = yaml.safe_load(path.read_text())
        for split, source in entry["splits"].items():
            assert len(source["md5"]) == 32, (path.name, split)
            if path.stem != "ptb_wsj_sample":  # derived from NLTK's .mrg trees: mirror only
                assert source["url"].startswith("https://"), (path.name, split)
