"""Fine-tuning for sentence-level tasks (GLUE-style): a Ray Train job, a registered MLflow model.

The paper's sequence-classification analyses use the [CLS] vector of a model fine-tuned
on the task. :func:`run_finetune` trains a Hugging Face model with a classification
(or, for STS-B, regression) head as a Ray Train ``TorchTrainer`` job, evaluates it on
the test set, logs the fine-tuned folder to MLflow and registers it as
``raydund-<model>-<corpus>``. Extraction then loads it by registry URI
(``models:/raydund-minilm-sst2/1``) and stores its activations under the lake model
name ``<model>-ft-<corpus>-v<version>``.

Modules: ``config`` (:class:`FinetuneConfig`, :class:`FinetuneResult`, the job key),
``data`` (corpus rows, dev split, tokenization, datasets), ``metrics`` (task metrics),
``train`` (the per-worker Ray Train loop, checkpoints, resumption), ``registry``
(registered and lake names, version status, registration, reuse) and ``job`` (the
driver, :func:`run_finetune`).
"""

from raydund.extract.models import load_tokenizer
from raydund.finetune.config import TASKS, FinetuneConfig, FinetuneResult, job_key
from raydund.finetune.data import infer_task, prepare_data
from raydund.finetune.job import run_finetune
from raydund.finetune.metrics import primary_metric, task_metrics
from raydund.finetune.registry import (
                                       JOB_KEY_TAG,
                                       STATUS_TAG,
                                       fail_interrupted_versions,
                                       lake_model_name,
                                       registered_name,
)
from raydund.finetune.train import storage_path, train_loop

__all__ = ["JOB_KEY_TAG", "STATUS_TAG", "TASKS", "FinetuneConfig", "FinetuneResult", "fail_interrupted_versions",
           "infer_task", "job_key", "lake_model_name", "load_tokenizer", "prepare_data", "primary_metric",
           "registered_name", "run_finetune", "storage_path", "task_metrics", "train_loop"]
