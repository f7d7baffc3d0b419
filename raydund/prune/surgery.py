"""Drop decoder blocks from a ``transformers`` causal LM: a real, smaller model.

The blocks live in one ``torch.nn.ModuleList`` whose place depends on the family:

============================================  ======================
Llama, Qwen2, Mistral, Gemma, Phi-3, ...      ``model.layers``
GPT-2                                         ``transformer.h``
GPT-NeoX / Pythia                             ``gpt_neox.layers``
============================================  ======================

After surgery the list holds only the kept blocks (in order), ``config.num_hidden_layers``
is their number (and ``config.layer_types``, where the family has one, keeps their
entries), and every attribute ``layer_idx`` inside block ``i`` is ``i``: the KV cache
indexes its layers by ``layer_idx``, so generation with a cache stays exact. The result
is saved and loaded by ``save_pretrained`` / ``from_pretrained`` like any model.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable

import torch

from raydund.errors import UserError
from raydund.extract.units import attribute

#: Attribute paths of the block list, tried in order.
BLOCK_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def block_path(model) -> str:
    """The attribute path of ``model``'s decoder blocks (see :data:`BLOCK_PATHS`).

    Raises
    ------
    UserError
        An architecture whose blocks raydund does not know how to find.
    """
    for path in BLOCK_PATHS:
        if isinstance(attribute(model, path), torch.nn.ModuleList):
            return path
    raise UserError(f"depth pruning does not support {type(model).__name__}: no decoder block list at "
                    f"{', '.join(BLOCK_PATHS)}")


def blocks(model) -> torch.nn.ModuleList:
    """The decoder blocks of ``model`` (a ``ModuleList``)."""
    return attribute(model, block_path(model))


def num_blocks(model) -> int:
    """Number of decoder blocks."""
    return len(blocks(model))


def check_drop(drop: Iterable[int], total: int) -> tuple[int, ...]:
    """The sorted, distinct block indices of ``drop``; a :class:`UserError` if any is out of range or all go."""
    out = tuple(sorted({int(b) for b in drop}))
    bad = [b for b in out if not 0 <= b < total]
    if bad:
        raise UserError(f"blocks {bad} out of range: the model has {total} blocks (0..{total - 1})")
    if len(out) >= total:
        raise UserError(f"cannot drop all {total} blocks")
    return out


def _set_blocks(model, path: str, kept: list) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(attribute(model, parent_path), name, torch.nn.ModuleList(kept))
    for i, block in enumerate(kept):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = i


def _config_state(config) -> dict:
    state = {"num_hidden_layers": config.num_hidden_layers}
    if getattr(config, "layer_types", None) is not None:
        state["layer_types"] = list(config.layer_types)
    return state


def _set_config(config, state: dict) -> None:
    for key, value in state.items():
        setattr(config, key, value)


def drop_blocks(model, drop: Iterable[int], inplace: bool = False):
    """``model`` without the decoder blocks ``drop`` (indices into the current blocks).

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (or its base model) of a supported family.
    drop : iterable of int
        Block indices, 0-based; duplicates are ignored.
    inplace : bool
        Change ``model`` itself; otherwise a deep copy is changed and ``model`` is untouched.

    Returns
    -------
    transformers.PreTrainedModel
        A model with ``num_blocks - len(set(drop))`` blocks; its config records the kept
        blocks' original indices in ``config.raydund_kept_blocks`` (composed over repeated drops).
    """
    path = block_path(model)
    total = num_blocks(model)
    drop = check_drop(drop, total)
    out = model if inplace else copy.deepcopy(model)
    old = list(attribute(out, path))
    keep = [i for i in range(total) if i not in drop]
    _set_blocks(out, path, [old[i] for i in keep])
    state = _config_state(out.config)
    state["num_hidden_layers"] = len(keep)
    if "layer_types" in state:
        state["layer_types"] = [state["layer_types"][i] for i in keep]
    _set_config(out.config, state)
    original = getattr(out.config, "raydund_kept_blocks", None) or list(range(total))
    out.config.raydund_kept_blocks = [int(original[i]) for i in keep]
    return out


@contextlib.contextmanager
def dropped(model, drop: Iterable[int]):
    """Temporarily drop blocks of ``model`` in place (no copy); everything is restored on exit.

    For evaluating many candidate block sets on one loaded model (one process, one thread
    at a time).
    """
    path = block_path(model)
    old = list(attribute(model, path))
    state = _config_state(model.config)
    had = hasattr(model.config, "raydund_kept_blocks")
    kept_before = getattr(model.config, "raydund_kept_blocks", None)
    try:
        yield drop_blocks(model, drop, inplace=True)
    finally:
        _set_blocks(model, path, old)
        _set_config(model.config, state)
        if had:
            model.config.raydund_kept_blocks = kept_before
        elif hasattr(model.config, "raydund_kept_blocks"):
            del model.config.raydund_kept_blocks


class _Replay(torch.nn.Module):
    """Stands in for blocks ``0..k-1`` of the full model: returns their output, cached per batch.

    ``outputs`` yields, batch after batch, the full model's residual stream entering block
    ``k`` (:func:`raydund.prune.evaluate.block_inputs`); the input is ignored.
    """

    def __init__(self, outputs, like: torch.nn.Module):
        super().__init__()
        self.outputs = outputs
        for name in ("attention_type", "layer_idx"):  # read by some model loops (Qwen2, Gemma)
            if hasattr(like, name):
                setattr(self, name, getattr(like, name))

    def forward(self, hidden_states, *args, **kwargs):
        out = next(self.outputs)
        if out.shape != hidden_states.shape:
            raise RuntimeError("replayed batch does not match: the texts or batches differ from the cached ones")
        return out


@contextlib.contextmanager
def resumed(model, drop: Iterable[int], block_inputs: list[list[torch.Tensor | None]] | None,
            base: Iterable[int] = ()):
    """:func:`dropped`, but blocks before the first dropped one are not run: their output is replayed.

    ``block_inputs[b][l]`` is the stream entering block ``l`` for batch ``b`` of the texts
    about to be scored (same texts, same batches), in the model without blocks ``base``
    (``None`` for the blocks of ``base``; :func:`raydund.prune.evaluate.seq_block_inputs`).
    ``base`` must be part of ``drop``. Dropping ``drop`` changes nothing before
    ``k = min(drop - base)``, so the forward resumes there: SLEB's candidates, each its
    greedy set so far (``base``) plus one block, cost only the blocks after that block
    (plus embeddings and head). Without a cache, when block 0 is dropped or when ``drop``
    is ``base``, this is :func:`dropped`. Forward only, no KV cache.
    """
    total = num_blocks(model)
    drop = check_drop(drop, total)
    base = set(check_drop(base, total)) if base else set()
    if not base <= set(drop):
        raise ValueError(f"the cached stream drops blocks {sorted(base - set(drop))} that {list(drop)} keeps")
    new = [b for b in drop if b not in base]
    if not new or new[0] == 0 or block_inputs is None:
        with dropped(model, drop) as m:
            yield m
        return
    k = new[0]
    path = block_path(model)
    old = list(attribute(model, path))
    state = _config_state(model.config)
    after = [i for i in range(k, total) if i not in drop]
    before = [i for i in range(k) if i not in base]  # the blocks the replay stands in for
    replay = _Replay(iter([b[k] for b in block_inputs]), old[before[-1]] if before else old[0])
    try:
        _set_blocks(model, path, [replay, *(old[i] for i in after)])
        new_state = {"num_hidden_layers": 1 + len(after)}
        if "layer_types" in state:
            first = state["layer_types"][before[-1] if before else 0]
            new_state["layer_types"] = [first, *(state["layer_types"][i] for i in after)]
        _set_config(model.config, new_state)
        yield model
    finally:
        _set_blocks(model, path, old)
        _set_config(model.config, state)
