"""The fine-tuning job: checks, the MLflow run, ``TorchTrainer.fit``, logging and registration.

:func:`run_finetune` trains a Hugging Face model with a classification (or, for STS-B,
regression) head as a Ray Train ``TorchTrainer`` job (:mod:`raydund.finetune.train`),
evaluates it on the test set, logs the fine-tuned folder to MLflow and registers it as
``raydund-<model>-<corpus>`` (:mod:`raydund.finetune.registry`). A re-run of a job that
already registered a version returns that version and trains nothing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

from raydund import faults, tracking
from raydund.config import Settings
from raydund.errors import UserError
from raydund.extract.encoder import LAKE_MODEL_TAG, default_threads, resolve_model
from raydund.finetune.config import FinetuneConfig, FinetuneResult, job_key
from raydund.finetune.data import prepare_data
from raydund.finetune.registry import existing_version, fail_interrupted_versions, register, registered_name, result_of
from raydund.finetune.train import storage_path, train_loop
from raydund.lake import Lake, corpus_table_name

log = logging.getLogger(__name__)


def _use_gpu(cfg: FinetuneConfig, ray) -> bool:
    if cfg.use_gpu is not None:
        return bool(cfg.use_gpu)
    return ray.cluster_resources().get("GPU", 0) >= cfg.num_workers


def _trainer(cfg: FinetuneConfig, spec, key: str, root: Path, loop_config: dict, use_gpu: bool):
    """The ``TorchTrainer`` of job ``key``: a run named by the key under ``root``, one checkpoint kept."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "source": spec.source, "revision": spec.revision,
                           **loop_config},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name=key, storage_path=str(root),
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )


def _log_checkpoint(mlflow, folder: Path, start: float) -> dict:
    """Log the final checkpoint's history, test and final dev metrics, state and model folder; return the state."""
    state = json.loads((folder / "state.json").read_text())
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
    mlflow.log_artifacts(str(folder / "model"), "model")
    return state


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
    from raydund.extract.job import ensure_ray

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
        done = existing_version(client, name, key)
        if done is not None:
            log.info("job %s already registered %s version %s", key, name, done.version)
            return result_of(client, done, task, key, time.perf_counter() - start)

    ray = ensure_ray()
    root = storage_path(settings)
    if cfg.fresh and (root / key).exists():
        shutil.rmtree(root / key)
    root.mkdir(parents=True, exist_ok=True)
    threads = cfg.threads or default_threads(cfg.num_workers)
    use_gpu = _use_gpu(cfg, ray)
    trainer = _trainer(cfg, spec, key, root, {"task": task, "classes": classes, "data": data, "threads": threads},
                       use_gpu)
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
            state = _log_checkpoint(mlflow, Path(folder), start)
        test = state["test"]
        faults.crash_point("finetune.before_register")
        version = register(client, mlflow, name, run.info.run_id, key, spec.name, cfg.corpus, task, test)
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
