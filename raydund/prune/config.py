"""What every pruning study of one causal LM is configured with (depth: :mod:`raydund.prune.study`, width:
:mod:`raydund.prune.width_study`)."""

from __future__ import annotations

import dataclasses

from raydund.errors import UserError


@dataclasses.dataclass(kw_only=True)
class StudyConfig:
    """The model, its text, and the Ray actors that evaluate its pruned versions.

    Attributes
    ----------
    model : str
        A catalog model (``smollm2``), a local model folder, a ``.gguf`` file or a hub id.
    corpus : str
        A catalog corpus (calibration and held-out text).
    calibration_split, eval_split : str
        Splits the calibration and the held-out evaluation sentences come from.
    calibration_sentences : int
        Calibration sentences, from the start of ``calibration_split``.
    eval_sentences : int
        Held-out sentences (perplexity), from the start of ``eval_split``.
    batch_size : int
    workers : int
        Ray actors, each holding the model.
    threads : int
        Torch threads (and Ray CPUs) per actor.
    register : bool
        Register the best pruned model in MLflow.
    """

    model: str
    corpus: str = "ud_english_ewt"
    calibration_split: str = "train"
    eval_split: str = "test"
    calibration_sentences: int = 256
    eval_sentences: int = 400
    batch_size: int = 8
    workers: int = 2
    threads: int = 1
    register: bool = True

    #: Fields that must be at least 1 (subclasses add theirs).
    POSITIVE = ("calibration_sentences", "eval_sentences", "workers", "threads", "batch_size")

    def __post_init__(self):
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1")
