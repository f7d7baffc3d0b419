"""The fine-tuning data: train/dev/test rows of a sentence-level corpus, tokenization, torch datasets.

Splits, as in the paper: a seeded ``dev_fraction`` of the official train is the dev
set (the same rows the probes hold out with ``splits=("train", "train", "dev")`` and
the same seed), the official dev is the test set.
"""

from __future__ import annotations

import numpy as np

from raydund.errors import UserError
from raydund.finetune.config import FinetuneConfig
from raydund.lake import Lake
from raydund.probes.data import held_out_mask


def infer_task(labels, given: str | None, corpus: str) -> str:
    """``regression`` for a float label column, ``classification`` otherwise; check a given task."""
    import pyarrow as pa

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


class EncodedDataset:
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


def make_collate(tokenizer):
    """A ``collate_fn`` that pads a batch of :class:`EncodedDataset` items and stacks their labels."""
    def collate(batch):
        import torch

        labels = torch.as_tensor(np.stack([b["labels"] for b in batch]))
        padded = tokenizer.pad([{k: v for k, v in b.items() if k != "labels"} for b in batch], return_tensors="pt")
        return {**padded, "labels": labels}

    return collate


class LengthGroupedBatches:
    """A batch sampler of rows of similar length: little padding, a new seeded order each epoch.

    Each epoch permutes the rows with ``(seed, epoch)``, sorts every window of
    ``window`` batches by length, cuts it into batches and permutes the batches. Worker
    ``rank`` of ``world`` takes every ``world``-th batch, wrapping around so that every
    worker gets the same number. SST-2 train phrases average 13 tokens while a random
    batch of 32 pads to ~40: grouping makes a step about 3x cheaper.

    Parameters
    ----------
    lengths : sequence of int
        Tokens of every row.
    batch_size, seed : int
    rank, world : int
        This worker and the number of workers.
    window : int
        Batches per sorted window (how local the grouping is).
    """

    def __init__(self, lengths, batch_size: int, seed: int, rank: int = 0, world: int = 1, window: int = 50):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.span = batch_size * window
        self.epoch = 0
        n = len(self.lengths)
        full, rest = divmod(n, self.span)
        self.total = full * -(-self.span // batch_size) + -(-rest // batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.span):
            window = order[start:start + self.span]
            window = window[np.argsort(-self.lengths[window], kind="stable")]
            batches.extend(window[i:i + self.batch_size] for i in range(0, len(window), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        return -(-self.total // self.world)

    def __iter__(self):
        batches = self._batches()
        for i in range(len(self)):
            yield batches[(i * self.world + self.rank) % len(batches)].tolist()
