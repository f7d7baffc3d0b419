"""The CLI's options come from the config dataclasses; its conventions (--version, -v/-q, --json, old flags)."""

import dataclasses
import logging

import pytest
from cli_json import run_both

from raydund.cli import build_parser, main
from raydund.cli.options import config_from, field_docs


def subparser(parser, *names):
    """The (populated) parser of ``raydund NAME [NAME ...]``."""
    for name in names:
        parser = next(a for a in parser._actions if a.dest in ("command", "explore", "tracking_command", "bench")
                      ).choices[name]
        if hasattr(parser, "populate"):
            parser.populate()
    return parser


def config_classes():
    from raydund.cli import extract, finetune, general, probes, transfer
    from raydund.explore import BrowserConfig
    from raydund.extract.job import ExtractConfig
    from raydund.finetune import FinetuneConfig
    from raydund.general.job import ClusterConfig
    from raydund.general.stream import SimilarityConfig
    from raydund.probes.job import ProbeConfig
    from raydund.transfer.job import TransferConfig

    # command, class, the CLI's overrides and skipped fields, the minimal command line, the config it means
    return [
        (("extract",), ExtractConfig, extract.OPTS, extract.SKIP, ["--corpus", "c", "--split", "dev"],
         {"model": "minilm", "corpus": "c", "split": "dev"}),
        (("similarity",), SimilarityConfig, general.SIMILARITY, general.SIMILARITY_SKIP,
         ["--corpus", "c", "--split", "dev"], {"model": "minilm", "corpus": "c", "split": "dev"}),
        (("cluster",), ClusterConfig, general.CLUSTER, general.CLUSTER_SKIP, ["--corpus", "c", "--split", "dev"],
         {"model": "minilm", "corpus": "c", "split": "dev"}),
        (("probe",), ProbeConfig, probes.OPTS, (), ["--corpus", "c", "--label", "pos"],
         {"model": "minilm", "corpus": "c", "label": "pos"}),
        (("transfer",), TransferConfig, transfer.OPTS, (), ["--corpus", "c", "--label", "pos"],
         {"model": "minilm", "corpus": "c", "labels": ("pos",)}),
        (("finetune",), FinetuneConfig, finetune.OPTS, finetune.SKIP, ["--corpus", "c"],
         {"model": "minilm", "corpus": "c"}),
        (("explore", "browser"), BrowserConfig, {}, (), ["--corpus", "c"], {}),
    ]


@pytest.mark.parametrize("case", config_classes(), ids=lambda c: " ".join(c[0]))
def test_every_config_field_is_one_option_with_the_dataclass_default(case):
    names, cls, opts, skip, argv, required = case
    parser = subparser(build_parser(), *names)
    visible = [a for a in parser._actions if a.help != "==SUPPRESS=="]
    for field in dataclasses.fields(cls):
        options = [a for a in visible if a.dest == field.name]
        assert len(options) == (0 if field.name in skip else 1), (field.name, options)
    args = build_parser().parse_args([*names, *argv])
    given = {"split": "dev"} if names in (("extract",), ("similarity",)) else {}  # one config per --split
    built = config_from(args, cls, opts, skip, **given)
    assert built == cls(**required), "the parser's defaults are the dataclass's"


def test_help_comes_from_the_numpydoc_attributes_of_the_class_and_its_bases():
    from raydund.probes.job import ProbeConfig

    docs = field_docs(ProbeConfig)
    assert docs["precision"][0] == '{"auto", "float32", "bfloat16"}'  # from ProbeSettings
    assert "redundant" in docs["redundant_share"][1] and "redundant" in docs["keep_share"][1]
    probe = subparser(build_parser(), "probe")
    precision = next(a for a in probe._actions if a.dest == "precision")
    assert precision.choices == ("auto", "float32", "bfloat16") and precision.default == "auto"


@pytest.mark.parametrize("old,new,message", [
    (["extract", "--pool-size", "3", "--num-gpus", "0.5"], ["extract", "--workers", "3", "--gpus", "0.5"],
     ["--pool-size is deprecated; use --workers", "--num-gpus is deprecated; use --gpus"]),
    (["similarity", "--groups", "2", "--num-gpus", "1"], ["similarity", "--workers", "2", "--gpus", "1"],
     ["--groups is deprecated; use --workers", "--num-gpus is deprecated; use --gpus"]),
    (["finetune", "--num-workers", "2", "--gpu", "yes"], ["finetune", "--workers", "2", "--gpus", "1"],
     ["--num-workers is deprecated; use --workers", "--gpu is deprecated; use --gpus"]),
])
def test_old_flags_map_to_the_new_ones_with_a_deprecation_line(old, new, message, capsys):
    tail = ["--corpus", "c"] + ([] if old[0] == "finetune" else ["--split", "dev"])
    assert vars(build_parser().parse_args(old + tail)) == vars(build_parser().parse_args(new + tail))
    err = capsys.readouterr().err.splitlines()
    assert err == [f"raydund: {m}" for m in message]


def test_finetune_gpus_mean_use_gpu():
    from raydund.cli import finetune
    from raydund.finetune import FinetuneConfig

    for value, use_gpu in (("auto", None), ("0", False), ("1", True)):
        args = build_parser().parse_args(["finetune", "--corpus", "c", "--gpus", value])
        assert config_from(args, FinetuneConfig, finetune.OPTS, finetune.SKIP).use_gpu is use_gpu


def test_version(capsys):
    from raydund import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"raydund {__version__}"


@pytest.mark.parametrize("argv,verbose,quiet", [
    (["tables"], False, False), (["-v", "tables"], True, False), (["tables", "-v"], True, False),
    (["tables", "--verbose"], True, False), (["-q", "tables"], False, True), (["tables", "-q"], False, True),
    (["explore", "top-words", "-v", "--corpus", "c", "--layer", "0", "--neuron", "0"], True, False),
])
def test_verbosity_before_or_after_the_subcommand(argv, verbose, quiet):
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (verbose, quiet)


def test_raydund_info_lines_only_with_v(monkeypatch, capsys):
    from raydund.cli import corpora

    monkeypatch.setattr(corpora, "cmd_catalog", lambda args: logging.getLogger("raydund.x").info("doing it"))
    assert main(["catalog"]) == 0
    assert logging.getLogger("raydund").getEffectiveLevel() == logging.WARNING
    assert main(["catalog", "-v"]) == 0
    assert logging.getLogger("raydund").getEffectiveLevel() == logging.INFO
    assert main(["catalog", "-q"]) == 0
    assert logging.getLogger("raydund").getEffectiveLevel() == logging.ERROR
    logging.getLogger("raydund").setLevel(logging.NOTSET)


@pytest.mark.parametrize("module,argv,resumes", [
    ("extract", ["extract", "--corpus", "c", "--split", "dev"], True),
    ("finetune", ["finetune", "--corpus", "c"], True),
    ("lake", ["tables"], False),
    ("general", ["similarity", "--corpus", "c", "--split", "dev"], False),
])
def test_only_commands_that_resume_say_re_run_to_resume(module, argv, resumes, monkeypatch, capsys):
    import importlib

    area = importlib.import_module(f"raydund.cli.{module}")
    name = {"extract": "cmd_extract", "finetune": "cmd_finetune", "lake": "cmd_tables", "general": "cmd_similarity"}

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(area, name[module], interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("raydund: interrupted (re-run the same command to resume)" if resumes else "raydund: interrupted")


# -- --json: the same numbers as the text ---------------------------------------------------


def test_catalog_json(capsys):
    text, data = run_both(["catalog"], capsys)
    assert set(data) == {"corpora", "models"} and data["models"]
    for entries in data.values():
        for entry in entries:
            assert f"  {entry['name']:<20} {entry['description']}" in text


def test_demo_parts(monkeypatch, capsys):
    """``demo --no-llm`` and ``--llm-only`` choose the parts; together they are one clear error, before any work."""
    from raydund.workflows import demo

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda settings, **kw: calls.append(kw))
    monkeypatch.setenv("RAYDUND_HOME", "/nonexistent/raydund-home")
    assert main(["demo", "--no-llm", "--llm-only"]) == 2
    assert "exclude each other" in capsys.readouterr().err and calls == []
    monkeypatch.setattr("raydund.cli.workflows.settings", lambda: None)
    assert main(["demo", "--llm-only", "--limit", "5"]) == 0
    assert main(["demo", "--no-llm"]) == 0
    assert calls == [{"limit": 5, "llm": True, "paper": False}, {"limit": None, "llm": False, "paper": True}]
