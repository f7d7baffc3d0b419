"""The CCFS result as a deployable model: raw text in, labels out.

The transformer is cut after the LayerSelector's layer (its later blocks are not in the
saved weights at all), only the selected neurons are read from the hidden states, and
the final probe maps them to labels. Saved as an MLflow pyfunc model:

- ``transformer/``: ``save_pretrained`` of the truncated model and its tokenizer;
- ``probe.npz``: the neuron positions, the probe's weights and intercept;
- ``meta.json``: classes, unit, aggregation, task, layer.

``ReducedModel.predict`` takes a pandas DataFrame with a ``text`` column (``text_b`` for
sentence pairs) or a list of sentences, each a string (words split on whitespace) or a
list of words (taken as is); anything else is refused. It returns one list of labels per
sentence (``unit="word"``) or one label per sentence (``unit="cls"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from raydund.errors import UserError


def truncate(model, blocks: int):
    """Keep the embeddings and the first ``blocks`` transformer blocks of ``model`` (modified in place).

    At least one block is kept: transformers records the hidden states (the embedding
    output included) as the blocks run, so a model with none returns no states. The block
    list is found as the ``ModuleList`` with ``config.num_hidden_layers``
    entries (``encoder.layer`` for BERT/RoBERTa, ``layer`` for XLNet, ``h`` for GPT-2).
    """
    n = int(model.config.num_hidden_layers)
    if not 0 <= blocks <= n:
        raise UserError(f"cannot keep {blocks} blocks of a {n}-block model")
    blocks = max(int(blocks), 1)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and name:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, torch.nn.ModuleList(list(module)[:blocks]))
            model.config.num_hidden_layers = blocks
            return model
    raise UserError(f"cannot find the transformer blocks of {type(model).__name__} to cut")


def save_reduced(path: str | Path, model_source: str, layer: int, neurons: np.ndarray, coef: np.ndarray,
                 intercept: np.ndarray, meta: dict) -> Path:
    """Write the artefacts of a reduced model into ``path`` (a fresh folder)."""
    from raydund.extract.models import load_model, source_spec
    from raydund.extract.units import HOOK_UNITS

    path = Path(path)
    path.mkdir(parents=True, exist_ok=False)
    model, tokenizer = load_model(source_spec("source", model_source))
    # hidden states: layer l is the output of block l (0 the embeddings); hooked units: layer l is inside block l
    truncate(model, layer + 1 if meta.get("unit") in HOOK_UNITS else layer)
    model.save_pretrained(path / "transformer")
    tokenizer.save_pretrained(path / "transformer")
    np.savez(path / "probe.npz", neurons=np.asarray(neurons, dtype=np.int64),
             coef=np.asarray(coef, dtype=np.float32), intercept=np.asarray(intercept, dtype=np.float32))
    (path / "meta.json").write_text(json.dumps({**meta, "layer": int(layer)}, indent=1), encoding="utf-8")
    return path


try:
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; keeps the module importable without it
    _PythonModel = object


class ReducedModel(_PythonModel):
    """MLflow pyfunc: truncated transformer -> selected neurons -> final probe.

    Also usable without MLflow: ``ReducedModel.from_folder(path)``.
    """

    def load_context(self, context):
        self._load(Path(context.artifacts["reduced"]))

    @classmethod
    def from_folder(cls, path: str | Path) -> ReducedModel:
        model = cls()
        model._load(Path(path))
        return model

    def _load(self, path: Path) -> None:
        from raydund.extract.encoder import Encoder
        from raydund.extract.models import ModelSpec, load_model
        from raydund.extract.units import HOOK_UNITS, unit_width

        self.meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        probe = np.load(path / "probe.npz")
        self.neurons, self.coef, self.intercept = probe["neurons"], probe["coef"], probe["intercept"]
        model, tokenizer = load_model(ModelSpec("reduced", str(path / "transformer")))
        hooked = self.meta.get("unit") in HOOK_UNITS
        self.encoder = Encoder(model, tokenizer, self.meta["aggregation"], self.meta.get("batch_size", 32),
                               unit=self.meta["unit"] if hooked else "word")
        width = unit_width(model, self.meta["unit"]) if hooked else int(model.config.hidden_size)
        self._layer, self._index = self.neurons // width, self.neurons % width

    def features(self, sentences: list[list[str]], sentences_b: list[list[str]] | None = None) -> list[np.ndarray]:
        """Per sentence, ``[words x k]`` (or ``[1 x k]`` for cls) values of the selected neurons."""
        out = [None] * len(sentences)
        if self.meta["unit"] == "cls":
            chunks = self.encoder.encode_cls(sentences, sentences_b)
        else:
            chunks = self.encoder.encode_words(sentences)
        parts: dict[int, list] = {}
        for chunk in chunks:
            values = chunk.layers[self._layer, :, self._index].T  # [n x k]
            for row, (s, w) in enumerate(zip(chunk.sentence_pos, chunk.word_ids)):
                parts.setdefault(int(s), []).append((int(w), values[row]))
        for s in range(len(sentences)):
            rows = sorted(parts.get(s, []), key=lambda p: p[0])
            out[s] = np.stack([v for _, v in rows]) if rows else np.zeros((0, len(self.neurons)), np.float32)
        return out

    def predict(self, context, model_input, params=None):
        """Labels for raw text: one list per sentence (words) or one label per sentence (cls)."""
        texts, texts_b = _texts(model_input)
        sentences = [_words(t) for t in texts]
        if any(not s for s in sentences):
            raise UserError("every input sentence needs at least one word")
        pairs = [_words(t) for t in texts_b] if texts_b is not None else None
        classes = self.meta.get("classes")
        out = []
        for feats in self.features(sentences, pairs):
            scores = feats @ self.coef + self.intercept
            labels = scores[:, 0].tolist() if classes is None else [classes[i] for i in scores.argmax(1)]
            out.append(labels[0] if self.meta["unit"] == "cls" else labels)
        return out


def _texts(model_input) -> tuple[list, list | None]:
    """The sentences (and second sentences of pairs) of a predict input, each a string or a word list."""
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, (list, tuple, np.ndarray)):
        return list(model_input), None
    columns = getattr(model_input, "columns", None)
    if columns is None or "text" not in columns:
        raise UserError("give a list of sentences (strings or lists of words) or a DataFrame with a 'text' "
                        "column (and 'text_b' for pairs)")
    b = list(model_input["text_b"]) if "text_b" in columns else None
    return list(model_input["text"]), b


def _words(sentence) -> list[str]:
    """One sentence as words: a string is split on whitespace, a list (or array) of strings is taken as is.

    Raises
    ------
    UserError
        Anything else (a number, ``None``, a list holding a non-string or an empty word).
    """
    if isinstance(sentence, str):
        return sentence.split()
    if isinstance(sentence, (list, tuple, np.ndarray)):
        words = list(sentence)
        if all(isinstance(w, str) and w.strip() for w in words):
            return words
        raise UserError(f"a pre-split sentence must be a list of non-empty strings, got {words[:5]!r}")
    raise UserError(f"a sentence must be a string or a list of words, got {type(sentence).__name__}: "
                    f"{str(sentence)[:40]!r}")


def log_reduced(mlflow, folder: Path, registered_name: str | None):
    """Log a reduced-model folder as an MLflow pyfunc model (and register it); returns the ModelInfo."""
    package = Path(__file__).resolve().parents[1]
    return mlflow.pyfunc.log_model(
        name="reduced_model", python_model=ReducedModel(), artifacts={"reduced": str(folder)},
        code_paths=[str(package)], registered_model_name=registered_name,
        pip_requirements=["torch", "transformers", "numpy", "mlflow"])
