"""A Hugging Face encoder that turns sentences into per-word vectors of every layer.

No Ray here: :class:`Encoder` works in a notebook as well as inside an actor.
Output convention: for each layer ``l`` a matrix ``[words x hidden]``; layer 0 is
the embedding layer, layers 1..L the transformer blocks (unit ``word``); for the hooked
units ``mlp`` and ``attn`` (:mod:`raydund.extract.units`) layer ``l`` is block ``l``,
0..L-1. Encoders get pre-split words; decoder LLMs natural text mapped back to words by
offsets (:mod:`raydund.extract.text`). Which model and how it is loaded:
:mod:`raydund.extract.models` (its names are re-exported here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

import numpy as np
import torch

from raydund.errors import UserError
from raydund.extract.align import check_aggregation, plan_windows, word_spans, word_token_counts
from raydund.extract.models import (
    LAKE_MODEL_TAG,
    REGISTRY_PREFIX,
    ModelSpec,
    load_model,
    load_tokenizer,
    resolve_model,
    resolve_registered,
)
from raydund.extract.text import encode_natural, is_decoder, sentence_text
from raydund.extract.units import HOOK_UNITS, capture, hooked_modules

__all__ = ["LAKE_MODEL_TAG", "REGISTRY_PREFIX", "UNITS", "Chunk", "Encoder", "ModelSpec", "default_threads",
           "WORD_UNITS", "first_nonfinite", "load_model", "load_tokenizer", "max_word_tokens", "parse_units",
           "resolve_model", "resolve_registered", "zero_nonfinite"]

log = logging.getLogger(__name__)

#: Lake units: per-word residual stream, one [CLS] vector per sentence, per-word MLP / attention outputs.
UNITS = ("word", "cls", *HOOK_UNITS)
#: Units with one vector per word (``cls`` has one per sentence).
WORD_UNITS = ("word", *HOOK_UNITS)


def parse_units(unit) -> tuple[str, ...]:
    """``"word,mlp"`` (a comma list, or a sequence of names) -> ``("word", "mlp")``, in :data:`UNITS` order.

    One forward pass fills every unit of the list, so several per-word units
    (:data:`WORD_UNITS`) can go together; ``cls`` (one vector per sentence) only alone.

    Raises
    ------
    UserError
        An empty list or item, an unknown or repeated unit, or ``cls`` with another unit.
    """
    parts = [p.strip() for p in unit.split(",")] if isinstance(unit, str) else [str(p).strip() for p in unit]
    given = ",".join(parts)
    if not parts or any(not p for p in parts):
        raise UserError(f"bad unit list {given!r}: an empty unit; use one of {', '.join(UNITS)} or a comma list "
                        "such as word,mlp")
    unknown = [p for p in parts if p not in UNITS]
    if unknown:
        raise UserError(f"unknown unit {unknown[0]!r} in {given!r}; use one of {', '.join(UNITS)} "
                        "or a comma list such as word,mlp")
    if len(set(parts)) < len(parts):
        raise UserError(f"bad unit list {given!r}: a unit is repeated")
    if "cls" in parts and len(parts) > 1:
        raise UserError(f"bad unit list {given!r}: cls (one vector per sentence) cannot be combined with "
                        "per-word units; extract it on its own")
    return tuple(u for u in UNITS if u in parts)


def max_word_tokens(model, tokenizer, pair: bool = False) -> int:
    """Room for word tokens in one input: the model's length limit minus special tokens."""
    limit = tokenizer.model_max_length if tokenizer.model_max_length < 100_000 else 512
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and positions > 0:  # XLNet (relative positions) reports -1
        offset = 2 if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        limit = min(limit, positions - offset)
    return limit - tokenizer.num_special_tokens_to_add(pair=pair)


@dataclasses.dataclass
class Chunk:
    """Vectors for a set of words: ``layers[l, i]`` belongs to word ``word_ids[i]`` of sentence ``sentence_pos[i]``.

    ``sentence_pos`` indexes the list of sentences given to the encoder; ``word_ids``
    is -1 for sentence-level (cls) vectors.
    """

    sentence_pos: np.ndarray
    word_ids: np.ndarray
    layers: np.ndarray  # float32 [layers x n x hidden] of the first (or only) unit
    units: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # unit -> its layers, every unit


class Encoder:
    """Batched extraction of per-word (or [CLS]) vectors from every layer.

    Parameters
    ----------
    model, tokenizer
        From :func:`load_model`.
    aggregation : {"last", "first", "mean"}
        How a word's subword vectors become one vector (NeuroX's default is ``last``).
    batch_size : int
        Sequences per forward pass. Give sentences sorted by length to cut padding.
    max_tokens : int, optional
        Override the room for word tokens per input (tests use it to force windows).
    unit : str or sequence of str
        What :meth:`encode_words` returns per layer: the hidden states (``word``, ``cls``)
        or the hooked MLP / attention outputs of every block; a comma list of per-word units
        (``"word,mlp"``, :func:`parse_units`) fills every one from the same forward pass
        (:attr:`Chunk.units`).
    """

    def __init__(self, model, tokenizer, aggregation: str = "last", batch_size: int = 32,
                 max_tokens: int | None = None, unit: str = "word"):
        self.model, self.tokenizer = model, tokenizer
        self.units = parse_units(unit)
        self.unit = ",".join(self.units)
        self.decoder = is_decoder(model.config)
        self._hooked = {u: len(hooked_modules(model, u)) for u in self.units if u in HOOK_UNITS}
        self.aggregation = check_aggregation(aggregation)
        self.batch_size = int(batch_size)
        self.max_tokens = max_tokens or max_word_tokens(model, tokenizer)
        self.device = next(model.parameters()).device
        self.dropped_words = 0
        self.truncated_sentences = 0

    @property
    def num_layers(self) -> int:
        """Layers of the first (or only) unit, see :meth:`layers_of`."""
        return self.layers_of(self.units[0])

    def layers_of(self, unit: str) -> int:
        """Layers returned for ``unit``: the embedding layer plus every block, or one per block for a hooked unit."""
        return self._hooked.get(unit) or int(self.model.config.num_hidden_layers) + 1

    # -- forward ------------------------------------------------------------------
    def _forward(self, features: dict[str, list]) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
        """Pad, run the model once; return unit -> one ``[batch, seq, width]`` tensor per layer, and padded ids."""
        batch = self.tokenizer.pad(features, return_tensors="pt", padding=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        hooked = [u for u in self.units if u in HOOK_UNITS]
        states = [u for u in self.units if u not in HOOK_UNITS]
        kwargs = {"output_hidden_states": bool(states)}
        if hooked or self.decoder:
            kwargs["use_cache"] = False  # a decoder's KV cache is never read here
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            captured = {u: stack.enter_context(capture(self.model, u)) for u in hooked}
            out = self.model(**batch, **kwargs)
        layers = {u: list(captured[u]) for u in hooked}
        for u in states:
            layers[u] = list(out.hidden_states)
        return layers, batch["input_ids"].cpu()

    def _tokenize(self, sentences: list[list[str]]) -> list[tuple[list[int], list[int | None]]]:
        """(input ids, word per token) of each sentence: pre-split words, or natural text for decoders."""
        if self.decoder:
            return encode_natural(self.tokenizer, sentences)
        enc = self.tokenizer(sentences, is_split_into_words=True, add_special_tokens=True)
        return [(enc["input_ids"][i], enc.word_ids(i)) for i in range(len(sentences))]

    def _left_pad(self, length: int, seq_len: int) -> int:
        return seq_len - length if self.tokenizer.padding_side == "left" else 0

    # -- words --------------------------------------------------------------------
    def encode_words(self, sentences: list[list[str]]):
        """Yield :class:`Chunk` s of per-word vectors, one per forward batch.

        Every word of every sentence appears in exactly one chunk. Sentences longer
        than the model's limit are split into overlapping windows
        (:func:`~raydund.extract.align.plan_windows`); words the tokenizer drops
        get a zero vector and are counted in ``dropped_words``.
        """
        segments = self._segments(sentences)
        segments.sort(key=lambda seg: len(seg["input_ids"]))
        for start in range(0, len(segments), self.batch_size):
            yield self._words_batch(segments[start : start + self.batch_size])

    def _segments(self, sentences):
        """Model inputs: one per sentence, or one per window of a long sentence."""
        if any(len(words) == 0 for words in sentences):
            raise UserError("an empty sentence cannot be encoded")
        segments = []
        for pos, (words, (ids, wids)) in enumerate(zip(sentences, self._tokenize(sentences))):
            counts = word_token_counts(wids, len(words))
            self.dropped_words += int((counts == 0).sum())
            windows, owner = plan_windows(counts, self.max_tokens)
            if len(windows) == 1:
                segments.append({"pos": pos, "offset": 0, "input_ids": ids,
                                 "word_ids": wids, "own": np.arange(len(words))})
                continue
            for i, (sub_ids, sub_wids) in enumerate(self._tokenize([words[s:e] for s, e in windows])):
                segments.append({"pos": pos, "offset": windows[i][0], "input_ids": sub_ids,
                                 "word_ids": sub_wids, "own": np.flatnonzero(owner == i)})
        return segments

    def _words_batch(self, segments) -> Chunk:
        layers, ids = self._forward({"input_ids": [seg["input_ids"] for seg in segments]})
        seq_len = ids.shape[1]
        rows_b, rows_t, out_pos, out_word, mean_rows = [], [], [], [], []
        n_out = 0
        for b, seg in enumerate(segments):
            pad = self._left_pad(len(seg["input_ids"]), seq_len)
            local = seg["own"] - seg["offset"]
            first, last = word_spans(seg["word_ids"], max(len(seg["word_ids"]), 1))
            first, last = first[local], last[local]
            for j, (f, l) in enumerate(zip(first, last)):
                if f < 0:
                    continue
                if self.aggregation == "mean":
                    for t in range(f, l + 1):
                        rows_b.append(b * seq_len + t + pad)
                        mean_rows.append(n_out + j)
                else:
                    rows_b.append(b * seq_len + (l if self.aggregation == "last" else f) + pad)
                    rows_t.append(n_out + j)
            out_pos.append(np.full(len(local), seg["pos"]))
            out_word.append(seg["own"])
            n_out += len(local)
        plan = (rows_b, mean_rows if self.aggregation == "mean" else rows_t, n_out)
        units = {u: self._gather(layers[u], *plan) for u in self.units}
        return Chunk(np.concatenate(out_pos), np.concatenate(out_word).astype(np.int32),
                     units[self.units[0]], units)

    def _gather(self, tensors: list[torch.Tensor], rows_b: list[int], dst_rows: list[int], n_out: int) -> np.ndarray:
        """``[layers x n_out x width]`` float32: token row ``rows_b[i]`` of every layer to word ``dst_rows[i]``.

        Only the words' rows are copied out of each layer (never a stack of whole layers);
        ``mean`` aggregation adds a word's tokens and divides by their count.
        """
        device = tensors[0].device
        src = torch.as_tensor(rows_b, dtype=torch.long, device=device)
        dst = torch.as_tensor(dst_rows, dtype=torch.long, device=device)
        sel = torch.stack([t.reshape(-1, t.shape[-1])[src] for t in tensors])  # [layers x rows x width]
        if self.aggregation != "mean" and len(dst_rows) == n_out and dst_rows == list(range(n_out)):
            return sel.float().cpu().numpy()  # every word found, in order: no scatter needed
        out = torch.zeros((len(tensors), n_out, sel.shape[-1]), dtype=sel.dtype, device=device)
        if self.aggregation == "mean":
            out.index_add_(1, dst, sel)
            counts = torch.zeros(n_out, device=device).index_add_(0, dst, torch.ones(len(dst_rows), device=device))
            out /= counts.clamp(min=1)[None, :, None]
        else:
            out[:, dst] = sel
        return out.float().cpu().numpy()

    # -- sentences ----------------------------------------------------------------
    def encode_cls(self, sentences: list[list[str]], sentences_b: list[list[str]] | None = None):
        """Yield :class:`Chunk` s with one sentence vector per input: the [CLS] token.

        BERT-style models have [CLS] first, XLNet ``<cls>`` last; models with no CLS
        token use their last real token, and so do decoder LLMs, which read the
        sentence as natural text (a pair as one text: the two sentences joined by a space).
        Encoders encode pairs as pairs.
        Inputs over the model's limit are truncated, counted in
        ``truncated_sentences`` and logged: one vector per sentence cannot be windowed.
        """
        if any(len(w) == 0 for w in sentences) or (sentences_b and any(len(w) == 0 for w in sentences_b)):
            raise UserError("an empty sentence cannot be encoded")
        order = np.argsort([len(w) + (len(sentences_b[i]) if sentences_b else 0) for i, w in enumerate(sentences)])
        limit = max_word_tokens(self.model, self.tokenizer, pair=sentences_b is not None)
        limit += self.tokenizer.num_special_tokens_to_add(pair=sentences_b is not None)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            a = [sentences[i] for i in idx]
            b = [sentences_b[i] for i in idx] if sentences_b else None
            enc = self._tokenize_sentences(a, b)
            lengths = [len(x) for x in enc["input_ids"]]
            cut = sum(n > limit for n in lengths)
            if cut:
                self.truncated_sentences += cut
                log.warning("%d sentence(s) longer than %d tokens truncated for their [CLS] vector", cut, limit)
                enc = self._tokenize_sentences(a, b, truncation=True, max_length=limit)
                lengths = [len(x) for x in enc["input_ids"]]
            layers, ids = self._forward(dict(enc))
            positions = torch.as_tensor(self._cls_positions(ids, lengths, ids.shape[1]))
            rows = torch.arange(len(idx))
            units = {u: torch.stack([t[rows, positions] for t in layers[u]]).float().cpu().numpy()
                     for u in self.units}
            yield Chunk(idx.astype(np.int64), np.full(len(idx), -1, dtype=np.int32), units[self.units[0]], units)

    def _tokenize_sentences(self, a, b, **kwargs):
        """Encode sentences (pairs) whole: pre-split words, or one natural text per input for decoders."""
        if self.decoder:
            texts = [sentence_text(x + (b[i] if b else []))[0] for i, x in enumerate(a)]
            return self.tokenizer(texts, **kwargs)
        return self.tokenizer(a, b, is_split_into_words=True, **kwargs)

    def _cls_positions(self, ids: torch.Tensor, lengths: list[int], seq_len: int) -> list[int]:
        cls_id = self.tokenizer.cls_token_id
        positions = []
        for row, length in enumerate(lengths):
            pad = self._left_pad(length, seq_len)
            if cls_id is not None and not self.decoder and (ids[row] == cls_id).any():
                positions.append(int((ids[row] == cls_id).nonzero()[0]))
            else:
                positions.append(pad + length - 1)
        return positions


def first_nonfinite(layers: np.ndarray) -> tuple[int, int] | None:
    """Where the first NaN or infinity of a chunk's ``[layers x rows x hidden]`` vectors is.

    One ``isfinite`` pass over the chunk; the position search runs only when one is found.

    Returns
    -------
    tuple of int or None
        ``(layer, row)`` of the first non-finite value (lowest layer, then lowest row),
        or None when every value is finite.
    """
    finite = np.isfinite(layers)
    if finite.all():
        return None
    layer, row = np.argwhere(~finite.all(axis=2))[0]
    return int(layer), int(row)


def zero_nonfinite(layers: np.ndarray) -> int:
    """Replace every NaN and infinity of ``layers`` by 0 in place; return how many there were."""
    bad = ~np.isfinite(layers)
    count = int(bad.sum())
    if count:
        layers[bad] = 0.0
    return count


def default_threads(pool_size: int = 1) -> int:
    """Torch threads for one of ``pool_size`` extraction actors sharing this machine."""
    return max(1, (os.cpu_count() or 1) // max(1, pool_size))
