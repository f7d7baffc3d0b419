"""The README's polars queries run as written, on a lake with a tiny model named `minilm`."""

import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from raydund.extract.job import ExtractConfig, run_extraction
from raydund.lake import Lake

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.usefixtures("ray_local")
def test_readme_queries_run(settings, tiny_model_dir, monkeypatch):
    import shutil

    model_dir = Path(settings.home) / "tiny"
    shutil.copytree(tiny_model_dir("bert"), model_dir)
    # the tiny model stands in for minilm: a user catalog entry (it wins over the shipped one) names it so
    (Path(settings.home) / "catalog" / "models").mkdir(parents=True)
    (Path(settings.home) / "catalog" / "models" / "minilm.yaml").write_text(f"source: {{hub: {model_dir}}}\n")
    monkeypatch.setenv("RAYDUND_CATALOG_PATH", str(Path(settings.home) / "catalog"))
    words = [["the", "dog", "fell"], ["stocks", "fell", "sharply", "."]] * 5
    pos = [["DT", "NN", "VBD"], ["NNS", "VBD", "RB", "."]] * 5
    Lake(settings).write_corpus("conll2000", {"dev": pa.table({"sentence_id": pa.array(range(10), pa.int64()),
                                                               "words": words, "pos": pos})})
    run_extraction(ExtractConfig(model="minilm", corpus="conll2000", split="dev"), settings, progress=False)
    for key, value in settings.env_vars().items():
        monkeypatch.setenv(key, value)
    from raydund.workflows.demo import QUERIES

    blocks = readme_python_blocks()
    assert blocks and blocks[0] == QUERIES, "the README shows the queries the demo prints"
    code = blocks[0].replace("neuron 42", "neuron 7").replace("list.get(42)", "list.get(7)")
    code = code.replace("layer=3", "layer=2").replace('pl.col("layer") == 3', 'pl.col("layer") == 2')
    code = code.replace('filter(pl.col("len") >= 5)', 'filter(pl.col("len") >= 1)')
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    X, keys = namespace["X"], namespace["keys"]
    assert X.shape == (35, 16) and keys.num_rows == 35
    assert set(namespace["top_words"]["word"]) == {"the", "dog", "fell", "stocks", "sharply", "."}
    per_tag = dict(zip(namespace["per_tag"]["pos"], namespace["per_tag"]["len"]))
    assert per_tag == {"DT": 5, "NN": 5, "VBD": 10, "NNS": 5, "RB": 5, ".": 5}
    np.testing.assert_allclose(  # the mean per tag equals NumPy on the layer matrix
        namespace["per_tag"].filter(pl.col("pos") == "VBD")["mean_act"][0],
        X[np.array(keys["word"].to_pylist()) == "fell", 7].mean(), rtol=1e-6)
    assert namespace["counts"]["len"].to_list() == [35] * 3
