"""The baselines of ``raydund bench extract --sizes``, each run as its own command, as a user would.

``python -m benchmarks.extract_scripts bare SENTENCES MODEL`` is the script a user writes
without raydund: read sentences (one per line, words separated by spaces), a batched
``transformers`` loop (batch 32, sorted by length), ``last`` subword aggregation, every
layer's word vectors copied to numpy and kept, nothing written. ``neurox`` runs NeuroX 1.0.9's
``extract_representations`` on the same file (one sentence per forward, HDF5 output).
Both print one line of JSON: words and the seconds of the whole process so far.
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
    what, sentences_path, model_dir = sys.argv[1:4]
    n = {"bare": bare, "neurox": neurox}[what](sentences_path, model_dir)
    print(json.dumps({"words": n, "seconds": time.perf_counter() - START}))
