"""Fine-tuning for sentence-level tasks (GLUE-style): a Ray Train job, a registered MLflow model.

The paper's sequence-classification analyses use the [CLS] vector of a model fine-tuned
on the task. :func:`run_finetune` trains a Hugging Face model with a classification
(or, for STS-B, regression) head as a Ray Train ``TorchTrainer`` job, evaluates it on
the test set, logs the fine-tuned folder to MLflow and registers it as
``raydund-<model>-<corpus>``. Extraction then loads it by registry URI
(``models:/raydund-minilm-sst2/1``) and stores its activations under the lake model
name ``<model>-ft-<corpus>-v<version>``.

Splits, as in the paper: a seeded ``dev_fraction`` of the official train is the dev
set (the same rows the probes hold out with ``splits=("train", "train", "dev")`` and
the same seed), the official dev is the test set.

Resumption: the job key (a fingerprint of the model, the corpus snapshot and every
setting that changes the result) names the Ray Train run under
``$RAYDUND_HOME/finetune``; every epoch ends in a checkpoint (weights, optimizer,
scheduler, metrics), and a re-run with the same key continues from the last one.
Each epoch reseeds dropout and the shuffling from ``(seed, epoch)``, so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from raydund import faults, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.extract.encoder import LAKE_MODEL_TAG, default_threads, resolve_model
from raydund.probes.data import held_out_mask
from raydund.lake import Lake, corpus_table_name

log = logging.getLogger(__name__)

TASKS = ("classification", "regression")
JOB_KEY_TAG = "raydund.job_key"
#: Registry tag of a version's state: ``pending`` (being registered), ``committed`` (complete: a re-run
#: of its job returns it) or ``failed`` (its registration was interrupted; never returned).
STATUS_TAG = "raydund.status"
#: Fields of :class:`FinetuneConfig` that do not change the fine-tuned weights.
_NOT_IN_KEY = ("use_gpu", "cpus_per_worker", "threads", "max_failures", "fail_after_steps", "fresh")


@dataclasses.dataclass
class FinetuneConfig:
    """What to fine-tune on which task, and how.

    Attributes
    ----------
    model : str
        Catalog name (``minilm``), local folder or hub id of the pretrained model.
    corpus : str
        An ingested sentence-level corpus (``sst2``, ``stsb``; a ``words_b`` column
        makes it a pair task).
    task : {"classification", "regression"}, optional
        Inferred from the corpus's label column (floats: regression) when not given.
    label : str
        The label column of the corpus table.
    train_split, test_split : str
        The official train and the split used as test (GLUE: the official dev).
    lr, weight_decay, warmup_ratio : float
        AdamW learning rate and weight decay (not on biases and LayerNorm); linear
        warm-up over ``warmup_ratio`` of the steps, then linear decay to 0.
    epochs, batch_size, max_length : int
        Epochs, sentences per step (per worker) and the truncation length in tokens.
    eval_batch_size : int
        Sentences per forward pass in evaluation.
    seed : int
        Seeds the head's initialisation, the dev split, the shuffling and dropout.
    dev_fraction : float
        Share of (the used part of) train held out as the dev set.
    train_limit : int, optional
        Only the first ``train_limit`` train sentences by ``sentence_id`` (GLUE files
        are in no particular order): the same sentences ``raydund extract --limit``
        takes, so probes on the extracted train see the fine-tuning data.
    num_workers : int
        Ray Train workers (data parallel).
    use_gpu : bool, optional
        One GPU per worker; ``None``: when the cluster has enough GPUs.
    cpus_per_worker : float
        CPUs Ray reserves per worker.
    threads : int, optional
        Torch threads per worker (default: CPUs of the node / workers).
    max_failures : int
        Worker-group restarts Ray Train makes (each resumes from the last checkpoint).
    fail_after_steps : int, optional
        Testing knob: a run that did not start from a checkpoint raises after this
        many optimizer steps (a real interruption, to test resumption).
    fresh : bool
        Drop the checkpoints of an earlier run of the same job and train again (and
        register a new version even when this job already registered one).
    """

    model: str
    corpus: str
    task: str | None = None
    label: str = "label"
    train_split: str = "train"
    test_split: str = "dev"
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    seed: int = 0
    dev_fraction: float = 0.1
    train_limit: int | None = None
    num_workers: int = 1
    use_gpu: bool | None = None
    cpus_per_worker: float = 1
    threads: int | None = None
    max_failures: int = 0
    fail_after_steps: int | None = None
    fresh: bool = False

    def check(self) -> "FinetuneConfig":
        """Validate choices a user typed.

        Raises
        ------
        UserError
            A value outside its allowed range.
        """
        if self.task is not None and self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        for name in ("epochs", "batch_size", "eval_batch_size", "max_length", "num_workers"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1")
        if not 0 < self.dev_fraction < 1:
            raise UserError(f"dev_fraction must be in (0, 1), got {self.dev_fraction}")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.train_limit is not None and self.train_limit < 2:
            raise UserError("train_limit must be at least 2 (train and dev each need a sentence)")
        return self


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tuning job produced.

    Attributes
    ----------
    registered_name, version : str
        The MLflow registered model and its version.
    lake_model : str
        The ``model`` name its activations get in the lake.
    test, dev : dict
        Test metrics and the last epoch's dev metrics.
    history : list of dict
        Per-epoch metrics (``epoch, train_loss, dev_*``).
    start_epochs : list of int
        The epoch each training attempt started at (``[0, 1]``: resumed after epoch 0).
    run_id, job_key : str
        The MLflow run of the job and its fingerprint.
    seconds : float
        Wall time of this call.
    reused : bool
        The job had already registered a model; nothing was trained.
    """

    registered_name: str
    version: str
    lake_model: str
    task: str
    test: dict
    dev: dict
    history: list
    start_epochs: list
    run_id: str
    job_key: str
    seconds: float
    reused: bool = False

    @property
    def uri(self) -> str:
        """The registry URI extraction takes as ``--model``."""
        return f"models:/{self.registered_name}/{self.version}"


# -- data ---------------------------------------------------------------------------------
def infer_task(labels, given: str | None, corpus: str) -> str:
    """``regression`` for a float label column, ``classification`` otherwise; check a given task."""
    import pyarrow as pa  # noqa: PLC0415

    inferred = "regression" if pa.types.is_floating(labels.type) else "classification"
    if given is not None and given != inferred:
        kind = "numeric scores" if inferred == "regression" else "class labels"
        raise UserError(f"corpus {corpus!r} holds {kind}: it is a {inferred} task, not {given}")
    return inferred


def _rows(table, label: str) -> dict:
    """Plain-Python columns of one split: words, words_b (or None), labels, sentence ids."""
    return {"words": table.column("words").to_pylist(),
            "words_b": table.column("words_b").to_pylist() if "words_b" in table.column_names else None,
            "labels": table.column(label).to_pylist(),
            "sentence_id": table.column("sentence_id").to_pylist()}


def _take(rows: dict, index: np.ndarray) -> dict:
    """The rows at ``index`` (a new dict; ``rows`` is left as it is)."""
    return {k: None if v is None else [v[i] for i in index] for k, v in rows.items()}


def prepare_data(cfg: FinetuneConfig, lake: Lake) -> tuple[dict, str, list | None]:
    """Train/dev/test rows, the task and the class list (``None`` for regression).

    Returns
    -------
    data : dict
        ``{"train", "dev", "test"}`` -> rows (``words, words_b, labels, sentence_id``);
        labels are class indices or float scores.
    task : str
    classes : list of str or None
    """
    train_table = lake.read_corpus(cfg.corpus, cfg.train_split)
    test_table = lake.read_corpus(cfg.corpus, cfg.test_split)
    if cfg.label not in train_table.column_names:
        raise UserError(f"corpus {cfg.corpus!r} has no label column {cfg.label!r}")
    task = infer_task(train_table.column(cfg.label), cfg.task, cfg.corpus)
    if cfg.train_limit:
        train_table = train_table.slice(0, cfg.train_limit)
    train = _rows(train_table, cfg.label)
    test = _rows(test_table, cfg.label)
    held = held_out_mask(len(train["words"]), cfg.dev_fraction, cfg.seed)
    if held.all() or not held.any():
        raise UserError(f"{len(train['words'])} train sentences are too few for a {cfg.dev_fraction:.0%} dev set")
    classes = None
    if task == "classification":
        classes = sorted(set(train["labels"]))
        unknown = sorted(set(test["labels"]) - set(classes))
        if unknown:
            raise UserError(f"{cfg.corpus}/{cfg.test_split} has labels {unknown} that the train sentences used "
                            f"lack; raise train_limit")
        index = {c: i for i, c in enumerate(classes)}
        train = {**train, "labels": [index[x] for x in train["labels"]]}
        test = {**test, "labels": [index[x] for x in test["labels"]]}
    data = {"train": _take(train, np.flatnonzero(~held)), "dev": _take(train, np.flatnonzero(held)), "test": test}
    return data, task, classes


# -- metrics ------------------------------------------------------------------------------
def task_metrics(task: str, predictions: np.ndarray, targets: np.ndarray, num_classes: int | None = None) -> dict:
    """Accuracy and F1 (classification) or Pearson, Spearman and MSE (regression).

    F1 is the positive class's for two classes (GLUE's MRPC/QQP metric), macro otherwise;
    ``macro_f1`` is always reported.
    """
    if task == "regression":
        from scipy.stats import pearsonr, spearmanr  # noqa: PLC0415

        p, t = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
        constant = np.ptp(p) == 0 or np.ptp(t) == 0
        return {"pearson": 0.0 if constant else float(pearsonr(p, t)[0]),
                "spearman": 0.0 if constant else float(spearmanr(p, t)[0]),
                "mse": float(np.mean((p - t) ** 2))}
    from sklearn.metrics import f1_score  # noqa: PLC0415

    p, t = np.asarray(predictions), np.asarray(targets)
    labels = list(range(num_classes or int(max(p.max(), t.max()) + 1)))
    binary = len(labels) == 2
    return {"accuracy": float(np.mean(p == t)),
            "f1": float(f1_score(t, p, labels=labels, average="binary" if binary else "macro",
                                 pos_label=1, zero_division=0)),
            "macro_f1": float(f1_score(t, p, labels=labels, average="macro", zero_division=0))}


def primary_metric(task: str) -> str:
    """The metric a task is judged by."""
    return "pearson" if task == "regression" else "accuracy"


# -- job key and storage ------------------------------------------------------------------
def job_key(cfg: FinetuneConfig, model_source: str, corpus_snapshot: int) -> str:
    """Fingerprint of everything that determines the fine-tuned weights."""
    fields = dataclasses.asdict(cfg)
    for name in _NOT_IN_KEY:
        fields.pop(name)
    fields.update(model_source=model_source, corpus_snapshot=corpus_snapshot)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def storage_path(settings: Settings) -> Path:
    """Absolute folder of the Ray Train runs (``<storage>/<job key>/checkpoint_*``)."""
    return settings.home / "finetune"


def registered_name(model: str, corpus: str) -> str:
    """The MLflow registry name of ``model`` fine-tuned on ``corpus``."""
    return f"raydund-{model}-{corpus}"


def lake_model_name(model: str, corpus: str, version: str | int) -> str:
    """The lake ``model`` name of a registered version's activations: ``minilm-ft-sst2-v1``."""
    return f"{model}-ft-{corpus}-v{version}"


# -- the Ray Train loop (runs on every worker) --------------------------------------------
def load_tokenizer(source: str, revision: str | None = None):
    """The fast tokenizer of ``source``, able to take pre-split words (as extraction loads it)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    kwargs = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, **kwargs)
    try:
        tokenizer(["a", "b"], is_split_into_words=True)
    except (ValueError, AssertionError):
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, add_prefix_space=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class _Encoded:
    """A torch dataset of tokenized rows (``input_ids`` etc. plus ``labels``)."""

    def __init__(self, tokenizer, rows: dict, max_length: int, regression: bool):
        enc = tokenizer(rows["words"], rows["words_b"], is_split_into_words=True, truncation=True,
                        max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(rows["words"]))]
        self.labels = np.asarray(rows["labels"], dtype=np.float32 if regression else np.int64)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return {**self.features[i], "labels": self.labels[i]}


def _collate(tokenizer):
    def collate(batch):
        import torch  # noqa: PLC0415

        labels = torch.as_tensor(np.stack([b["labels"] for b in batch]))
        padded = tokenizer.pad([{k: v for k, v in b.items() if k != "labels"} for b in batch], return_tensors="pt")
        return {**padded, "labels": labels}

    return collate


def _predict(model, dataset, batch_size: int, collate, device, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs (class index or score) and targets of ``dataset``, gathered from every worker."""
    import torch  # noqa: PLC0415
    from torch.utils.data import DataLoader, Subset  # noqa: PLC0415

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


def train_loop(config: dict) -> None:
    """The per-worker training function of the ``TorchTrainer``.

    ``config`` holds ``cfg`` (a :class:`FinetuneConfig` as a dict), ``source``,
    ``revision``, ``task``, ``classes`` and ``data`` (train/dev/test rows). Every epoch
    ends with dev metrics and a checkpoint (``model/`` as ``save_pretrained`` writes it,
    ``training_state.pt``, ``state.json``); the last one also holds the test metrics.
    """
    import ray.train  # noqa: PLC0415
    import ray.train.torch  # noqa: PLC0415
    import torch  # noqa: PLC0415
    from torch.utils.data import DataLoader, DistributedSampler  # noqa: PLC0415
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup  # noqa: PLC0415

    cfg = FinetuneConfig(**config["cfg"])
    regression = config["task"] == "regression"
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    tokenizer = load_tokenizer(config["source"], config["revision"])
    datasets = {k: _Encoded(tokenizer, v, cfg.max_length, regression) for k, v in config["data"].items()}
    collate = _collate(tokenizer)

    checkpoint = ray.train.get_checkpoint()
    state = {"epoch": 0, "step": 0, "history": [], "start_epochs": []}
    torch.manual_seed(cfg.seed)  # the new head's initial weights
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
    state["start_epochs"] = [*state["start_epochs"], state["epoch"]]
    if state["epoch"] >= cfg.epochs:
        return  # a finished job re-run: the last checkpoint is the result
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    sampler = DistributedSampler(datasets["train"], num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(datasets["train"], batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    total = len(loader) * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    fail_at = cfg.fail_after_steps if checkpoint is None else None
    unwrapped = model.module if hasattr(model, "module") else model

    for epoch in range(state["epoch"], cfg.epochs):
        sampler.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout: same stream whether resumed or not
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
        dev = task_metrics(config["task"], *_predict(unwrapped, datasets["dev"], cfg.eval_batch_size, collate,
                                                     device, rank, world), len(config["classes"] or []))
        record = {"epoch": epoch, "step": state["step"], "train_loss": float(np.mean(losses)),
                  **{f"dev_{k}": v for k, v in dev.items()}}
        state = {**state, "epoch": epoch + 1, "history": [*state["history"], record]}
        if epoch + 1 == cfg.epochs:
            test = task_metrics(config["task"], *_predict(unwrapped, datasets["test"], cfg.eval_batch_size,
                                                          collate, device, rank, world),
                                len(config["classes"] or []))
            state["test"] = test
            record = {**record, **{f"test_{k}": v for k, v in test.items()}}
        with tempfile.TemporaryDirectory() as folder:
            ckpt = None
            if rank == 0:
                unwrapped.save_pretrained(Path(folder) / "model")
                tokenizer.save_pretrained(Path(folder) / "model")
                torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                           Path(folder) / "training_state.pt")
                (Path(folder) / "state.json").write_text(json.dumps(state))
                ckpt = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(record, checkpoint=ckpt)


# -- the driver ---------------------------------------------------------------------------
def _existing_version(client, name: str, key: str):
    """The complete version an earlier run of this job registered, if any.

    Complete: tagged ``committed``, or registered before versions had a status (it has
    its lake name). A ``pending`` or ``failed`` version is never returned.
    """
    versions = client.search_model_versions(f"name='{name}'")  # empty when the model is not registered yet
    found = [v for v in versions if v.tags.get(JOB_KEY_TAG) == key and _complete(v)]
    return max(found, key=lambda v: int(v.version)) if found else None


def _complete(version) -> bool:
    status = version.tags.get(STATUS_TAG)
    return status == "committed" or (status is None and LAKE_MODEL_TAG in version.tags)


def fail_interrupted_versions(client, name: str, key: str) -> list[str]:
    """Tag ``failed`` every ``pending`` version of job ``key``: its registration never finished.

    Runs of one job key share their Ray Train storage, so they never run at the same
    time: a pending version seen by a new run of the same key belongs to a dead run.
    Returns the versions it tagged.
    """
    versions = client.search_model_versions(f"name='{name}'")  # empty when the model is not registered yet
    stale = [str(v.version) for v in versions
             if v.tags.get(JOB_KEY_TAG) == key and v.tags.get(STATUS_TAG) == "pending"]
    for number in stale:
        client.set_model_version_tag(name, number, STATUS_TAG, "failed")
        log.warning("%s version %s: its registration was interrupted; tagged failed", name, number)
    return stale


def _use_gpu(cfg: FinetuneConfig, ray) -> bool:
    if cfg.use_gpu is not None:
        return bool(cfg.use_gpu)
    return ray.cluster_resources().get("GPU", 0) >= cfg.num_workers


def run_finetune(cfg: FinetuneConfig, settings: Settings) -> FinetuneResult:
    """Fine-tune on Ray Train, evaluate on the test set, log and register the model in MLflow.

    Parameters
    ----------
    cfg : FinetuneConfig
    settings : Settings

    Returns
    -------
    FinetuneResult

    Raises
    ------
    UserError
        An unknown model or corpus, a task that does not match the labels, too little data.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.torch import TorchTrainer  # noqa: PLC0415

    from raydund.extract.job import ensure_ray  # noqa: PLC0415

    cfg.check()
    start = time.perf_counter()
    lake = Lake(settings)
    spec = resolve_model(cfg.model)
    data, task, classes = prepare_data(cfg, lake)
    corpus_snapshot = lake.table(corpus_table_name(cfg.corpus)).current_snapshot().snapshot_id
    key = job_key(cfg, f"{spec.source}@{spec.revision}", corpus_snapshot)
    name = registered_name(spec.name, cfg.corpus)
    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    fail_interrupted_versions(client, name, key)
    if not cfg.fresh:
        done = _existing_version(client, name, key)
        if done is not None:
            log.info("job %s already registered %s version %s", key, name, done.version)
            return _result_of(client, done, task, key, time.perf_counter() - start)

    ray = ensure_ray()
    root = storage_path(settings)
    if cfg.fresh and (root / key).exists():
        shutil.rmtree(root / key)
    root.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads(cfg.num_workers)
    use_gpu = _use_gpu(cfg, ray)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "source": spec.source, "revision": spec.revision,
                           "task": task, "classes": classes, "data": data, "threads": threads},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=key, storage_path=str(root),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    experiment = tracking.experiment_name(spec.name, cfg.corpus)
    params = {**{k: v for k, v in dataclasses.asdict(cfg).items() if k != "fail_after_steps"},
              "task": task, "model_name": spec.name, "model_source": spec.source, "revision": spec.revision,
              "corpus_snapshot_id": corpus_snapshot, "job_key": key, "use_gpu": use_gpu, "threads": threads,
              "classes": ",".join(classes or []), "train_sentences": len(data["train"]["words"]),
              "dev_sentences": len(data["dev"]["words"]), "test_sentences": len(data["test"]["words"])}
    with tracking.job_run(settings, experiment, f"finetune {cfg.corpus}", params,
                          tags={"raydund.stage": "finetune", "raydund.job_key": key}) as run:
        try:
            result = trainer.fit()
        except Exception as exc:
            if _is_user_error(exc):
                raise UserError(str(exc).splitlines()[-1]) from None
            raise
        if result.checkpoint is None:
            raise RuntimeError(f"fine-tuning job {key} ended without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            state = json.loads((Path(folder) / "state.json").read_text())
            for record in state["history"]:
                mlflow.log_metrics({k: v for k, v in record.items() if k not in ("epoch", "step")},
                                   step=record["epoch"])
            test = state["test"]
            mlflow.log_metrics({**{f"test_{k}": v for k, v in test.items()},
                                **{f"dev_{k[4:]}_final": v for k, v in state["history"][-1].items()
                                   if k.startswith("dev_")},
                                "start_epoch": state["start_epochs"][-1], "attempts": len(state["start_epochs"]),
                                "steps": state["step"], "seconds": time.perf_counter() - start})
            mlflow.log_dict(state, "finetune_state.json")
            mlflow.log_artifacts(str(Path(folder) / "model"), "model")
        faults.crash_point("finetune.before_register")
        version = _register(client, mlflow, name, run.info.run_id, key, spec.name, cfg.corpus, task, test)
        # the registry holds the model now: tracking failures from here on are spooled, never raised
        tracking.Tracker(settings, run.info.run_id).tags({
            "raydund.registered_model": name, "raydund.model_version": version.version,
            LAKE_MODEL_TAG: version.tags[LAKE_MODEL_TAG]})
    return FinetuneResult(
        registered_name=name, version=str(version.version), lake_model=version.tags[LAKE_MODEL_TAG], task=task,
        test=test, dev={k[4:]: v for k, v in state["history"][-1].items() if k.startswith("dev_")},
        history=state["history"], start_epochs=state["start_epochs"], run_id=run.info.run_id, job_key=key,
        seconds=time.perf_counter() - start,
    )


def _is_user_error(exc: Exception) -> bool:
    return "raydund.errors.UserError" in str(exc) or "raydund.errors.CorpusError" in str(exc)


def _register(client, mlflow, name: str, run_id: str, key: str, model: str, corpus: str, task: str, test: dict):
    """A new version of ``name`` from this run's ``model`` artifacts, tagged with its lake name and metrics.

    The version is created ``pending`` and tagged ``committed`` last, once every tag is set.
    """
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, tags={"raydund.base_model": model, "raydund.corpus": corpus},
                                       description=f"{model} fine-tuned on {corpus} ({task}) by raydund")
    source = mlflow.get_artifact_uri("model")
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          tags={JOB_KEY_TAG: key, "raydund.task": task, STATUS_TAG: "pending",
                                                **{f"test_{k}": f"{v:.6f}" for k, v in test.items()}})
    lake_model = lake_model_name(model, corpus, version.version)
    client.set_model_version_tag(name, version.version, LAKE_MODEL_TAG, lake_model)
    faults.crash_point("finetune.during_registration")
    client.set_model_version_tag(name, version.version, STATUS_TAG, "committed")
    return client.get_model_version(name, version.version)


def _result_of(client, version, task: str, key: str, seconds: float) -> FinetuneResult:
    """A :class:`FinetuneResult` rebuilt from a registered version and its run."""
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    history = []
    for m in client.get_metric_history(version.run_id, "train_loss"):
        record = {"epoch": m.step, "train_loss": m.value}
        for name in metrics:
            if name.startswith("dev_") and not name.endswith("_final"):
                values = [h.value for h in client.get_metric_history(version.run_id, name) if h.step == m.step]
                record[name] = values[0] if values else float("nan")
        history.append(record)
    return FinetuneResult(
        registered_name=version.name, version=str(version.version), lake_model=version.tags[LAKE_MODEL_TAG],
        task=task, test={k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
        dev={k[4:-6]: v for k, v in metrics.items() if k.startswith("dev_") and k.endswith("_final")},
        history=sorted(history, key=lambda r: r["epoch"]), start_epochs=[], run_id=version.run_id, job_key=key,
        seconds=seconds, reused=True,
    )


# -- the sentence-level walk-through ------------------------------------------------------
def sentence_demo(settings: Settings, corpus: str = "sst2", model: str = "minilm", train_limit: int | None = 2000,
                  epochs: int = 1, max_length: int = 64, batch_size: int = 32, lr: float = 5e-5,
                  thresholds: tuple[float, ...] | None = None, seed: int = 0) -> dict:
    """Fine-tune -> extract [CLS] (train, dev) -> layer-wise probes -> clustering sweep, for one GLUE task.

    The corpus is ingested first when the lake lacks it. Train is the first
    ``train_limit`` sentences (fine-tuning and extraction take the same ones); the
    probes hold out the same 10% dev rows as the fine-tuning (same seed) and test on
    the official dev. Prints nothing; returns a summary for the caller to show.
    Extraction resolves the registry URI with :meth:`Settings.from_env`, so ``settings``
    must be the environment's (as the CLI's are).

    Parameters
    ----------
    settings : Settings
    corpus, model : str
        A sentence-level catalog corpus and a pretrained model.
    train_limit : int, optional
        Train sentences used (``None``: all).
    epochs, max_length, batch_size : int
    lr : float
        Fine-tuning settings (small defaults keep this to a few minutes on 2 CPU cores).
    thresholds : tuple of float, optional
        Clustering thresholds (default: the paper's 0.0..0.9).
    seed : int

    Returns
    -------
    dict
        ``uri, lake_model, task, finetune_test, finetune_seconds, extract_seconds,
        probe_layers (probe -> dev/test metric), probe_oracle, clusters (threshold ->
        neurons kept), seconds``.
    """
    from raydund.general.clustering import DEFAULT_THRESHOLDS  # noqa: PLC0415
    from raydund.extract.job import ExtractConfig, run_extraction  # noqa: PLC0415
    from raydund.corpora.job import ingest  # noqa: PLC0415
    from raydund.probes.job import ProbeConfig, run_probes  # noqa: PLC0415
    from raydund.general.job import ClusterConfig, run_clustering, run_similarity  # noqa: PLC0415
    from raydund.general.stream import SimilarityConfig  # noqa: PLC0415

    start = time.perf_counter()
    lake = Lake(settings)
    if corpus_table_name(corpus) not in lake.table_names():
        ingest(corpus, settings)
    ft = run_finetune(FinetuneConfig(model=model, corpus=corpus, train_limit=train_limit, epochs=epochs,
                                     max_length=max_length, batch_size=batch_size, lr=lr, seed=seed), settings)
    t_extract = time.perf_counter()
    for split, limit in (("train", train_limit), ("dev", None)):
        run_extraction(ExtractConfig(model=ft.uri, corpus=corpus, split=split, unit="cls", limit=limit),
                       settings, progress=False)
    extract_seconds = time.perf_counter() - t_extract
    run_similarity(SimilarityConfig(model=ft.lake_model, corpus=corpus, split="train", unit="cls"), settings,
                   progress=False)
    cc = run_clustering(ClusterConfig(model=ft.lake_model, corpus=corpus, split="train", unit="cls",
                                      thresholds=tuple(thresholds or DEFAULT_THRESHOLDS), seed=seed), settings)
    probes = run_probes(ProbeConfig(model=ft.lake_model, corpus=corpus, label="label", unit="cls", task=ft.task,
                                    splits=("train", "train", "dev"), seed=seed, control=False,
                                    cluster_split="train", standardize=True), settings)
    key = primary_metric(ft.task)
    layers = {r["probe"]: {"dev": r["dev"][key], "test": r["test"][key]} for r in probes["layerwise"]}
    return {
        "uri": ft.uri, "lake_model": ft.lake_model, "task": ft.task, "metric": key,
        "finetune_test": ft.test, "finetune_seconds": ft.seconds, "extract_seconds": extract_seconds,
        "probe_layers": layers, "probe_oracle": layers.get("oracle"),
        "clusters": {row["threshold"]: row["neurons_kept"] for row in cc.summary_},
        "probe_run_id": probes["run_id"], "seconds": time.perf_counter() - start,
    }
