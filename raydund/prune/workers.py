"""Ray actors that hold one loaded model and evaluate block sets dropped from it.

A pruning study asks many questions of one model: a calibration perplexity per SLEB
candidate, an evaluation per (criterion, n). Loading SmolLM2 from GGUF takes ~20 s and
deep-copying it per question would dominate, so each of ``workers`` actors loads the model
once and answers each question as one actor task: it drops the blocks in place
(:func:`raydund.prune.surgery.dropped`), computes, and restores them. Each actor runs torch
on ``threads`` threads and reserves as many Ray CPUs.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np


@dataclasses.dataclass
class StudyData:
    """The text of a study (sentences are word lists; see :mod:`raydund.prune.evaluate`).

    Attributes
    ----------
    calibration : list of list of str
        Sentences the criteria read (hidden states) and SLEB scores candidates on (its first ``sleb`` ones).
    calibration_labels : list of list of str
        Word labels of ``calibration`` (the ``probe`` criterion); may be empty.
    evaluation : list of list of str
        Held-out sentences: perplexity, and the POS probe's test words.
    evaluation_labels : list of list of str
    probe_train, probe_train_labels : list of list of str
        Sentences (and labels) the POS probe of each pruned model is trained on.
    sst2_texts : list of str
    sst2_labels : list of int
        0 negative, 1 positive.
    sleb : int
        Calibration sentences SLEB scores each candidate on.
    batch_size : int
    """

    calibration: list
    calibration_labels: list
    evaluation: list
    evaluation_labels: list
    probe_train: list
    probe_train_labels: list
    sst2_texts: list
    sst2_labels: list
    sleb: int = 64
    batch_size: int = 8


class Evaluator:
    """One loaded model answering questions about block sets dropped from it (the body of a Ray actor)."""

    def __init__(self, model_name: str, data: StudyData, threads: int = 1, model=None, tokenizer=None,
                 device: str = "cpu"):
        import torch

        from raydund.prune import models

        torch.set_num_threads(threads)
        self.data = data
        self.model, self.tok = (model, tokenizer) if model is not None else models.load(model_name, device=device)
        self._block_inputs: dict = {}

    def num_blocks(self) -> int:
        from raydund.prune.surgery import num_blocks

        return num_blocks(self.model)

    def calibration_perplexity(self, drop: tuple[int, ...], sentences: int | None = None,
                               base: tuple[int, ...] = ()) -> float:
        """Perplexity of the first ``sentences`` (default ``data.sleb``) calibration sentences without blocks ``drop``.

        The stream entering every block of the model without ``base`` (part of ``drop``;
        SLEB: its greedy set so far) is computed once for these sentences and the forward
        resumes at the first block of ``drop`` not in ``base``
        (:func:`raydund.prune.surgery.resumed`); the held-out perplexity of :meth:`evaluate`
        resumes from the full model's stream.
        """
        from raydund.prune import evaluate

        k = self.data.sleb if sentences is None else sentences
        return self._perplexity(drop, evaluate.join(self.data.calibration[:k]), tuple(base))

    def _inputs(self, seqs: list[list[int]], base: tuple[int, ...] = ()) -> list:
        """The block inputs of the model without ``base`` for token id sequences, computed once per text.

        The full model's (``base`` empty) are kept for every text; of the others only the
        last one asked for (a SLEB step's candidates share one base).
        """
        from raydund.prune import evaluate

        key = (tuple(map(tuple, seqs)), tuple(sorted(base)))
        if key not in self._block_inputs:
            if base:
                self._block_inputs = {k: v for k, v in self._block_inputs.items() if not k[1]}
            self._block_inputs[key] = evaluate.seq_block_inputs(self.model, seqs, self.data.batch_size, key[1])
        return self._block_inputs[key]

    def _perplexity(self, drop: tuple[int, ...], texts: list[str], base: tuple[int, ...] = ()) -> float:
        from raydund.prune import evaluate
        from raydund.prune.surgery import resumed

        with resumed(self.model, drop, self._inputs(evaluate.encode(self.tok, texts), base), base):
            return evaluate.perplexity(self.model, self.tok, texts, self.data.batch_size)

    def _word_vectors(self, drop: tuple[int, ...], sentences: list[list[str]]) -> np.ndarray:
        from raydund.prune import evaluate
        from raydund.prune.surgery import resumed

        with resumed(self.model, drop, self._inputs(evaluate.word_seqs(self.tok, sentences))):
            return evaluate.word_vectors(self.model, self.tok, sentences, self.data.batch_size)

    def states(self, words: bool = False) -> list[np.ndarray]:
        """The full model's ``H[l]`` on the calibration text: per token, or per word (last subword)."""
        from raydund.prune import evaluate

        if words:
            return evaluate.word_hidden_states(self.model, self.tok, self.data.calibration, self.data.batch_size)
        return evaluate.hidden_states(self.model, self.tok, evaluate.join(self.data.calibration),
                                      self.data.batch_size)

    def evaluate(self, drop: tuple[int, ...], metrics: tuple[str, ...]) -> dict:
        """``{"ppl", "sst2", "pos"}`` (those asked for) and the seconds each took, without blocks ``drop``."""
        from raydund.prune import evaluate
        from raydund.prune.surgery import resumed

        d, out, test = self.data, {}, None
        if "ppl" in metrics:
            start = time.perf_counter()
            text = evaluate.join(d.evaluation)
            if "pos" in metrics and evaluate.same_ids(self.tok, d.evaluation):  # POS test words: same forward
                with resumed(self.model, drop, self._inputs(evaluate.encode(self.tok, text))):
                    out["ppl"], test = evaluate.perplexity_and_word_vectors(self.model, self.tok, d.evaluation,
                                                                             d.batch_size)
            else:
                out["ppl"] = self._perplexity(drop, text)
            out["seconds_ppl"] = time.perf_counter() - start
        if "pos" in metrics:
            start = time.perf_counter()
            train = self._word_vectors(drop, d.probe_train)
            test = self._word_vectors(drop, d.evaluation) if test is None else test
            out["pos"] = evaluate.probe_accuracy(train, flat(d.probe_train_labels), test, flat(d.evaluation_labels))
            out["seconds_pos"] = time.perf_counter() - start
        if "sst2" in metrics:
            start = time.perf_counter()
            seqs = evaluate.prompt_seqs(self.tok, d.sst2_texts)
            cache = self._inputs(seqs) if evaluate.one_token_words(self.tok) else None
            with resumed(self.model, drop, cache):
                out["sst2"] = evaluate.zero_shot_accuracy(self.model, self.tok, d.sst2_texts, d.sst2_labels,
                                                          batch_size=d.batch_size)
            out["seconds_sst2"] = time.perf_counter() - start
        return out

    def save(self, drop: tuple[int, ...], folder: str) -> str:
        """Write the model without blocks ``drop`` (and its tokenizer) to ``folder``."""
        from raydund.prune.surgery import drop_blocks

        small = drop_blocks(self.model, drop)
        small.save_pretrained(folder)
        self.tok.save_pretrained(folder)
        return folder


def flat(labels: list[list]) -> list:
    """Word labels of every sentence, in order, as one list."""
    return [x for sent in labels for x in sent]


class Pool:
    """``workers`` :class:`Evaluator` actors; ``map`` sends one question per actor task, in order."""

    def __init__(self, ray, model_name: str, data: StudyData, workers: int, threads: int, device: str = "auto"):
        from ray.util import ActorPool

        gpus = gpu_share(ray, workers, device)
        # an actor killed (e.g. by Ray's memory monitor) restarts, reloads the model and retries its task
        actor = ray.remote(num_cpus=threads, num_gpus=gpus, max_restarts=2, max_task_retries=2)(Evaluator)
        data_ref = ray.put(data)
        self.ray = ray
        where = "cuda" if gpus else "cpu"
        self.actors = [actor.remote(model_name, data_ref, threads, device=where) for _ in range(workers)]
        self.pool = ActorPool(self.actors)

    def imap(self, method: str, args: list[tuple]):
        """``actor.method(*a)`` for every ``a`` in ``args``, spread over the actors; yields results in order."""
        return self.pool.map(lambda a, v: getattr(a, method).remote(*v), args)

    def map(self, method: str, args: list[tuple]) -> list:
        """:meth:`imap` as a list."""
        return list(self.imap(method, args))

    def one(self, method: str, *args):
        """``method(*args)`` on the first actor."""
        return self.ray.get(getattr(self.actors[0], method).remote(*args))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def gpu_share(ray, workers: int, device: str) -> float:
    """GPUs per actor: ``auto`` shares the cluster's GPUs among the actors (at most one each), ``cpu`` none.

    ``cuda`` on a cluster without GPUs is a :class:`~raydund.errors.UserError`.
    """
    from raydund.errors import UserError

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, not {device!r}")
    gpus = 0.0 if device == "cpu" else float(ray.cluster_resources().get("GPU", 0))
    if device == "cuda" and not gpus:
        raise UserError("--device cuda: the Ray cluster has no GPU")
    return min(1.0, gpus / workers) if gpus else 0.0


class LocalPool:
    """:class:`Pool` in this process (one :class:`Evaluator`; tests and debugging)."""

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    def imap(self, method: str, args: list[tuple]):
        return (getattr(self.evaluator, method)(*a) for a in args)

    def map(self, method: str, args: list[tuple]) -> list:
        return list(self.imap(method, args))

    def one(self, method: str, *args):
        return getattr(self.evaluator, method)(*args)

    def close(self) -> None:
        pass
