"""The Ray Train loop: :func:`train_loop` runs on every ``TorchTrainer`` worker.

Resumption: the job key names the Ray Train run under ``$RAYDUND_HOME/finetune``
(:func:`storage_path`); every epoch ends in a checkpoint (weights, optimizer,
scheduler, metrics), and a re-run with the same key continues from the last one.
Each epoch reseeds dropout and the shuffling from ``(seed, epoch)``, so a resumed run
ends with the same weights as an uninterrupted one.

Ray pickles :func:`train_loop` by reference: it must stay a module-level function of
this importable module.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from raydund.config import Settings
from raydund.extract.models import load_tokenizer
from raydund.finetune.config import FinetuneConfig
from raydund.finetune.data import EncodedDataset, LengthGroupedBatches, make_collate
from raydund.finetune.metrics import task_metrics


def storage_path(settings: Settings) -> Path:
    """Absolute folder of the Ray Train runs (``<storage>/<job key>/checkpoint_*``)."""
    return settings.home / "finetune"


def _predict(model, dataset, batch_size: int, collate, device, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (class index or score) and targets of ``dataset``, gathered from every worker."""
    import torch
    from torch.utils.data import DataLoader, Subset

    mine = list(range(rank, len(dataset), world))
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, collate_fn=collate)
    outputs = []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits = model(**batch).logits
            outputs.append((logits[:, 0] if logits.shape[1] == 1 else logits.argmax(-1)).float().cpu().numpy())
    out = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (mine, out))
        order = np.concatenate([p[0] for p in parts]).astype(np.int64)
        values = np.concatenate([p[1] for p in parts])
        out = np.empty_like(values)
        out[order] = values
    return out, dataset.labels


def _param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _start(config: dict, checkpoint, tokenizer, regression: bool, seed: int):
    """The model, the saved optimizer/scheduler state (``None`` on a fresh start) and the run state.

    From the checkpoint when there is one; otherwise the pretrained model with a new head
    initialised from ``seed``.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    state = {"epoch": 0, "step": 0, "history": [], "start_epochs": []}
    torch.manual_seed(seed)  # the new head's initial weights
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
            model = AutoModelForSequenceClassification.from_pretrained(Path(folder) / "model")
            saved = torch.load(Path(folder) / "training_state.pt", weights_only=True)
    else:
        classes = config["classes"]
        head = ({"num_labels": 1, "problem_type": "regression"} if regression else
                {"num_labels": len(classes), "problem_type": "single_label_classification",
                 "id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}})
        kwargs = {"revision": config["revision"]} if config["revision"] else {}
        model = AutoModelForSequenceClassification.from_pretrained(config["source"], **head, **kwargs)
        saved = None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, saved, state


def _optimizer(model, steps_per_epoch: int, cfg: FinetuneConfig, saved: dict | None):
    """AdamW and the linear warm-up/decay schedule, restored from ``saved`` when resuming."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler


def _train_epoch(model, loader, optimizer, scheduler, state: dict, fail_at: int | None) -> list[float]:
    """One pass over ``loader``; counts steps in ``state["step"]``; returns the batch losses."""
    import torch

    model.train()
    losses = []
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        state["step"] += 1
        if fail_at is not None and state["step"] >= fail_at:
            raise RuntimeError(f"injected failure after {state['step']} steps (fail_after_steps)")
    return losses


def _report(rank: int, model, tokenizer, optimizer, scheduler, state: dict, record: dict) -> None:
    """Report ``record`` to Ray Train with a checkpoint that rank 0 writes (model, training state, state.json)."""
    import ray.train
    import torch

    with tempfile.TemporaryDirectory() as folder:
        ckpt = None
        if rank == 0:
            model.save_pretrained(Path(folder) / "model")
            tokenizer.save_pretrained(Path(folder) / "model")
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                       Path(folder) / "training_state.pt")
            (Path(folder) / "state.json").write_text(json.dumps(state))
            ckpt = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(record, checkpoint=ckpt)


def train_loop(config: dict) -> None:
    """The per-worker training function of the ``TorchTrainer``.

    ``config`` holds ``cfg`` (a :class:`FinetuneConfig` as a dict), ``source``,
    ``revision``, ``task``, ``classes`` and ``data`` (train/dev/test rows). Every epoch
    ends with dev metrics and a checkpoint (``model/`` as ``save_pretrained`` writes it,
    ``training_state.pt``, ``state.json``); the last one also holds the test metrics.
    """
    import ray.train
    import ray.train.torch
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    cfg = FinetuneConfig(**config["cfg"])
    regression = config["task"] == "regression"
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    tokenizer = load_tokenizer(config["source"], config["revision"])
    datasets = {k: EncodedDataset(tokenizer, v, cfg.max_length, regression) for k, v in config["data"].items()}
    collate = make_collate(tokenizer)

    checkpoint = ray.train.get_checkpoint()
    model, saved, state = _start(config, checkpoint, tokenizer, regression, cfg.seed)
    state["start_epochs"] = [*state["start_epochs"], state["epoch"]]
    if state["epoch"] >= cfg.epochs:
        return  # a finished job re-run: the last checkpoint is the result
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    if cfg.group_by_length:
        lengths = [len(f["input_ids"]) for f in datasets["train"].features]
        sampler = LengthGroupedBatches(lengths, cfg.batch_size, cfg.seed, rank, world)
        loader = DataLoader(datasets["train"], batch_sampler=sampler, collate_fn=collate)
    else:
        sampler = DistributedSampler(datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
        loader = DataLoader(datasets["train"], batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    optimizer, scheduler = _optimizer(model, len(loader), cfg, saved)
    fail_at = cfg.fail_after_steps if checkpoint is None else None
    unwrapped = model.module if hasattr(model, "module") else model

    def evaluate(split: str) -> dict:
        outputs = _predict(unwrapped, datasets[split], cfg.eval_batch_size, collate, device, rank, world)
        return task_metrics(config["task"], *outputs, len(config["classes"] or []))

    for epoch in range(state["epoch"], cfg.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout: same stream whether resumed or not
        losses = _train_epoch(model, loader, optimizer, scheduler, state, fail_at)
        dev = evaluate("dev")
        record = {"epoch": epoch, "step": state["step"], "train_loss": float(np.mean(losses)),
                  **{f"dev_{k}": v for k, v in dev.items()}}
        state = {**state, "epoch": epoch + 1, "history": [*state["history"], record]}
        if epoch + 1 == cfg.epochs:
            test = evaluate("test")
            state["test"] = test
            record = {**record, **{f"test_{k}": v for k, v in test.items()}}
        _report(rank, unwrapped, tokenizer, optimizer, scheduler, state, record)
