"""``raydund finetune``: a sentence-level task on Ray Train, the model registered in MLflow; resumes when re-run."""

from __future__ import annotations

import dataclasses

from raydund.cli.common import command, emit, settings
from raydund.cli.options import Opt, add_fields, config_from

#: ``--gpus`` of fine-tuning: one GPU per worker or none; ``auto``: when the cluster has them.
GPUS = {"auto": None, "0": False, "1": True}
OPTS = {
    "model": Opt(default="minilm"),
    "num_workers": Opt(flag="--workers", old=("--num-workers",)),
    "use_gpu": Opt(flag="--gpus", type=str, choices=tuple(GPUS), default="auto", convert=GPUS.get, old=("--gpu",),
                   old_values={"auto": "auto", "yes": "1", "no": "0"},
                   help="GPUs per worker: 1, 0 (CPU) or auto (one each when the cluster has enough)"),
    "cpus_per_worker": Opt(flag="--num-cpus"),
}
#: ``fail_after_steps`` interrupts a run on purpose (tests of resumption).
SKIP = ("fail_after_steps",)


def register(sub) -> None:
    command(sub, "finetune", "fine-tune on a sentence-level task (Ray Train) and register the model in MLflow",
            cmd_finetune, populate=_options, resumes=True)


def _options(p) -> None:
    from raydund.finetune import FinetuneConfig

    add_fields(p, FinetuneConfig, OPTS, SKIP)


def finetune_text(cfg, out) -> str:
    lines = []
    for record in out.history:
        dev = ", ".join(f"{k[4:]} {v:.4f}" for k, v in record.items() if k.startswith("dev_"))
        lines.append(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, dev {dev}")
    lines.append("test: " + ", ".join(f"{k} {v:.4f}" for k, v in out.test.items()))
    if out.reused:
        lines.append(f"job {out.job_key} had already finished: nothing trained")
    elif len(out.start_epochs) > 1:
        lines.append(f"resumed from the checkpoint after epoch {out.start_epochs[-1] - 1}")
    lines.append(f"registered model {out.uri}  (MLflow run {out.run_id})")
    lines.append(f"extract it with: raydund extract --model {out.uri} --corpus {cfg.corpus} --unit cls --split ...")
    lines.append(f"its activations are stored as model {out.lake_model!r}")
    return "\n".join(lines)


def cmd_finetune(args) -> None:
    from raydund.finetune import FinetuneConfig, run_finetune

    cfg = config_from(args, FinetuneConfig, OPTS, SKIP)
    out = run_finetune(cfg, settings())
    emit(args, {**dataclasses.asdict(out), "uri": out.uri}, lambda: finetune_text(cfg, out))
