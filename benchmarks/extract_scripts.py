"""The baselines of ``raydund bench extract --sizes``, each run as its own command, as a user would.

``python -m benchmarks.extract_scripts bare SENTENCES MODEL`` is the script a user writes
without raydund: read sentences (one per line, words separated by spaces), a batched
``transformers`` loop (batch 32, sorted by length), ``last`` subword aggregation, every
layer's word vectors copied to numpy and kept, nothing written. ``neurox`` runs NeuroX 1.0.9's
``extract_representations`` on the same file (one sentence per forward, HDF5 output).
``bare_decoder SENTENCES MODEL [GGUF]`` is the same bare loop for a decoder LLM (SmolLM2), with
raydund's decoder convention (:mod:`raydund.extract.text`): each sentence as natural text (its
words joined by single spaces, right padding), a token belongs to the word holding its last
character (the space before a word belongs to the word), a word's vector is its last
token's; every hidden state (embeddings + blocks) and every block's MLP neurons (the input
of ``mlp.down_proj``, from forward pre-hooks) in the same forward pass, float32, kept in numpy.
Each prints one line of JSON: words, the seconds of the whole process so far, and its peak RSS.
"""

from __future__ import annotations

import json
import os
import sys
import time

START = time.perf_counter()


def bare(path: str, model_path: str, batch_size: int = 32) -> int:
    """The bare loop; returns the number of word vectors (per layer) it collected."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    with open(path, encoding="utf-8") as fh:
        sentences = [line.split() for line in fh if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    kept, words = [], 0
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = [sentences[i] for i in order[s: s + batch_size]]
            enc = tokenizer(batch, is_split_into_words=True, padding=True, truncation=True, return_tensors="pt")
            hidden = torch.stack(model(**enc, output_hidden_states=True).hidden_states)
            for b in range(len(batch)):
                last = {}
                for pos, w in enumerate(enc.word_ids(b)):
                    if w is not None:
                        last[w] = pos
                idx = torch.tensor([last[w] for w in sorted(last)])
                kept.append(np.ascontiguousarray(hidden[:, b, idx].numpy()))
                words += len(idx)
    return words


def bare_decoder(path: str, model_path: str, gguf_file: str | None = None, batch_size: int = 32) -> int:
    """The bare decoder loop (hidden states + MLP neurons); returns the number of words it collected."""
    import bisect

    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    with open(path, encoding="utf-8") as fh:
        sentences = [line.split() for line in fh if line.strip()]
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(model_path, **extra)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32, **extra).eval()
    mlp: list = []
    for block in model.layers:
        block.mlp.down_proj.register_forward_pre_hook(lambda _m, args: mlp.append(args[0]))
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    kept, words = [], 0
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            batch = [sentences[i] for i in order[s: s + batch_size]]
            texts = [" ".join(words_) for words_ in batch]
            enc = tokenizer(texts, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                            return_tensors="pt")
            offsets, special = enc.pop("offset_mapping").tolist(), enc.pop("special_tokens_mask").tolist()
            mlp.clear()
            hidden = model(**enc, output_hidden_states=True, use_cache=False).hidden_states
            rows, seq = [], enc["input_ids"].shape[1]
            for b, words_ in enumerate(batch):
                starts = np.cumsum([0] + [len(w) + 1 for w in words_[:-1]]) - 1  # a word owns the space before it
                last = {}
                for t, ((start, end), sp) in enumerate(zip(offsets[b], special[b])):
                    if not sp and end > start and enc["attention_mask"][b, t]:
                        last[bisect.bisect_right(starts, end - 1) - 1] = t
                rows += [b * seq + last[w] for w in range(len(words_))]
            idx = torch.tensor(rows)
            kept.append([np.ascontiguousarray(h.reshape(-1, h.shape[-1])[idx].numpy()) for h in (*hidden, *mlp)])
            words += len(rows)
    return words


def neurox(path: str, model_path: str) -> int:
    """NeuroX 1.0.9's extraction to HDF5; returns the number of words in the file."""
    import contextlib
    import io
    import tempfile

    from neurox.data.extraction import transformers_extractor

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        transformers_extractor.extract_representations(
            model_path, path, os.path.join(tmp, "out.hdf5"), aggregation="last", device="cpu", output_type="hdf5")
    with open(path, encoding="utf-8") as fh:
        return sum(len(line.split()) for line in fh)


if __name__ == "__main__":
    import resource

    what, sentences_path, model_dir, *rest = sys.argv[1:]
    n = {"bare": bare, "bare_decoder": bare_decoder, "neurox": neurox}[what](sentences_path, model_dir, *rest)
    print(json.dumps({"words": n, "seconds": time.perf_counter() - START,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
