"""A local model folder's lake name: --name, the catalog, its config's model id, the folder; collisions refused."""

import json
import shutil
from pathlib import Path

import pytest

from raydund.errors import UserError
from raydund.extract.encoder import resolve_model


def _copy(src, dst: Path, name_or_path=None) -> Path:
    shutil.copytree(src, dst)
    if name_or_path is not None:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**config, "_name_or_path": name_or_path}))
    return dst


def test_minilm_package_folder_is_named_minilm():
    catalog = resolve_model("minilm")
    assert Path(catalog.source).name == "model"  # the package's folder is called `model`
    assert resolve_model(catalog.source).name == "minilm"
    assert resolve_model(catalog.source).source == str(Path(catalog.source).resolve())


def test_folder_named_from_config_then_folder(tiny_model_dir, tmp_path):
    hub = _copy(tiny_model_dir("bert"), tmp_path / "model", "nreimers/MiniLM-L6-H384-uncased")
    assert resolve_model(str(hub)).name == "MiniLM-L6-H384-uncased"
    saved = _copy(tiny_model_dir("bert"), tmp_path / "tinyone", "/tmp/some/where/model")  # a path, not an id
    assert resolve_model(str(saved)).name == "tinyone"
    assert resolve_model(str(saved), lake_name="mine").name == "mine"
    assert resolve_model(tiny_model_dir("bert")).name == "bert"  # no _name_or_path


def test_a_name_the_catalog_gives_another_source_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="'minilm' is the catalog's name for .*choose another name with --name"):
        resolve_model(tiny_model_dir("bert"), lake_name="minilm")
    clash = _copy(tiny_model_dir("bert"), tmp_path / "minilm")  # named after the folder
    with pytest.raises(UserError, match="'minilm' is the catalog's name"):
        resolve_model(str(clash))
    with pytest.raises(UserError, match="'bert-base-cased' is the catalog's name for bert-base-cased"):
        resolve_model(str(_copy(tiny_model_dir("bert"), tmp_path / "x", "bert-base-cased")))
    assert resolve_model("minilm", lake_name="minilm").name == "minilm"  # the same source is fine


def test_extract_cli_takes_name():
    from raydund.cli import build_parser, extract_config

    args = build_parser().parse_args(["extract", "--model", "/m", "--name", "tiny", "--corpus", "c", "--split", "dev"])
    assert [cfg.name for cfg in extract_config(args)] == ["tiny"]
