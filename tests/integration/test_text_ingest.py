"""`raydund ingest --text`: a user's unlabelled sentences become a corpus; general analyses run, probes refuse."""

import numpy as np
import pytest

from raydund.cli import main
from raydund.lake import Lake

LINES = ["The quick brown fox jumped over the lazy dog.", "Stocks fell 3.5% on Monday, didn't they?",
         "Naïve cafés (in Zürich) open at 7:30!", "Hello world"] * 4


@pytest.fixture
def home(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return settings, path


def test_ingest_text_then_probes_say_labels_are_needed(home, capsys):
    settings, path = home
    assert main(["ingest", "--text", str(path), "--name", "mine"]) == 0
    assert "mine/train: 16 sentences" in capsys.readouterr().out
    corpus = Lake(settings).read_corpus("mine", "train")
    assert [c for c in corpus.column_names if c != "split"] == ["sentence_id", "words"]
    assert corpus.column("words")[1].as_py() == ["Stocks", "fell", "3.5", "%", "on", "Monday", ",", "didn't",
                                                 "they", "?"]
    assert main(["probe", "--model", "m", "--corpus", "mine", "--label", "upos"]) == 2
    assert "has no labels (unlabelled text): probes and transfer need a labelled corpus" in capsys.readouterr().err
    assert main(["ingest", "--text", str(path)]) == 2
    assert "--text FILE takes --name NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_general_analyses_run_on_unlabelled_text(home, tiny_model_dir, ray_local):
    from raydund.extract.job import ExtractConfig, run_extraction
    from raydund.general.job import SimilarityConfig, run_similarity

    settings, path = home
    assert main(["ingest", "--text", str(path), "--name", "mine", "--split", "dev", "--pretokenize", "whitespace"]) == 0
    run_extraction(ExtractConfig(model=tiny_model_dir("qwen2"), corpus="mine", split="dev", name="q"), settings,
                   progress=False)
    sim = run_similarity(SimilarityConfig(model="q", corpus="mine", split="dev"), settings, progress=False)
    assert sim["similarity"].n == sum(len(s.split()) for s in LINES) and np.allclose(np.diag(sim["similarity"].cka), 1)
