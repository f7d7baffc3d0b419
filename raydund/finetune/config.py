"""What a fine-tuning job is asked for and what it returns: :class:`FinetuneConfig`, :class:`FinetuneResult`.

Also the job key: the fingerprint of every setting that changes the fine-tuned weights,
which names the Ray Train run (resumption) and tags the registered version (reuse).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from raydund.errors import UserError
from raydund.tasks import TASKS

__all__ = ["TASKS", "FinetuneConfig", "FinetuneResult", "job_key"]
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
    group_by_length : bool
        Batch train sentences of similar length (:class:`~raydund.finetune.data.LengthGroupedBatches`)
        instead of plain shuffled batches: a step pads less (on SST-2 it costs about a third).
        Off by default: where length predicts the label, batches hold one class.
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
    group_by_length: bool = False
    train_limit: int | None = None
    num_workers: int = 1
    use_gpu: bool | None = None
    cpus_per_worker: float = 1
    threads: int | None = None
    max_failures: int = 0
    fail_after_steps: int | None = None
    fresh: bool = False

    def check(self) -> FinetuneConfig:
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


def job_key(cfg: FinetuneConfig, model_source: str, corpus_snapshot: int) -> str:
    """Fingerprint of everything that determines the fine-tuned weights."""
    fields = dataclasses.asdict(cfg)
    for name in _NOT_IN_KEY:
        fields.pop(name)
    fields.update(model_source=model_source, corpus_snapshot=corpus_snapshot)
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
