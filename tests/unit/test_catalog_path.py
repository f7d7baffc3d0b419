"""RAYDUND_CATALOG_PATH: the user's catalog folders beside the shipped one."""

import pytest

from raydund.config import CATALOG_DIR, catalog_dirs, catalog_entries, load_yaml
from raydund.errors import UserError


def _user_catalog(tmp_path):
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "mine.yaml").write_text("description: my corpus\nformat: conll2000\n")
    (tmp_path / "corpora" / "conll2000.yaml").write_text("description: my own copy of conll2000\n")
    return tmp_path


def test_shipped_catalog_lives_in_the_package():
    assert CATALOG_DIR.parent.name == "raydund" and (CATALOG_DIR / "corpora" / "conll2000.yaml").is_file()


def test_user_folder_entries_are_found_and_win(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYDUND_CATALOG_PATH", str(_user_catalog(tmp_path)))
    entries = catalog_entries("corpora")
    assert entries["mine"] == tmp_path / "corpora" / "mine.yaml"
    assert entries["conll2000"] == tmp_path / "corpora" / "conll2000.yaml"  # the user's folder wins
    assert entries["sst2"].parent.parent == CATALOG_DIR  # built-in entries still there
    assert load_yaml("corpora", "mine") == {"description": "my corpus", "format": "conll2000", "name": "mine"}
    assert load_yaml("corpora", "conll2000")["description"] == "my own copy of conll2000"
    assert "minilm" in catalog_entries("models")


def test_catalog_path_refusals(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYDUND_CATALOG_PATH", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="RAYDUND_CATALOG_PATH names .*missing.*not a folder"):
        catalog_dirs()
    monkeypatch.delenv("RAYDUND_CATALOG_PATH")
    with pytest.raises(UserError, match="unknown corpus '../corpora/conll2000'"):
        load_yaml("corpora", "../corpora/conll2000")  # a name, never a path into the catalog
