"""Units beyond the residual stream: each block's MLP inner activations and attention output, from hooks.

``mlp``: the input of the MLP's down projection, i.e. the MLP's neurons: ``act(gate) * up``
for gated MLPs (Llama, Qwen2, Mistral, Gemma: ``mlp.down_proj``; SmolLM2: 30 x 1,536),
``act(fc)`` for GPT-2 (``mlp.c_proj``), GPT-NeoX/Pythia (``mlp.dense_4h_to_h``) and BERT
encoders (``output.dense``: MiniLM 6 x 1,536). A forward pre-hook on the down projection
captures it.

``attn``: the attention block's output before the residual add, i.e. the output of its
output projection (``self_attn.o_proj``, GPT-2's ``attn.c_proj``, NeoX's ``attention.dense``,
BERT's ``attention.output.dense``), captured by a forward hook. (Gemma 2/3 normalise it
once more before the add, BERT after it; those norms are not included.)

Layer numbering: block ``l`` (0-based) is layer ``l``, so a model with ``L`` blocks has
layers ``0..L-1`` of these units, where the residual stream (unit ``word``) has ``0..L``
(0 the embeddings). No Ray here.
"""

from __future__ import annotations

import contextlib

import torch

from raydund.errors import UserError

#: Units read from hooks inside each block (per word, like ``word``).
HOOK_UNITS = ("mlp", "attn")

#: Where the blocks are (relative to the base model) and, per unit, the hooked module in a block.
BLOCK_LISTS = ("layers", "h", "encoder.layer", "decoder.layers", "transformer.h", "gpt_neox.layers", "model.layers")
HOOK_TARGETS = {
    "mlp": ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "output.dense"),
    "attn": ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.dense", "attn.out_proj",
             "attention.output.dense"),
}


def attribute(module, dotted: str):
    """``module.a.b.c`` for ``dotted = "a.b.c"``, or None where a part is missing."""
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def hooked_modules(model, unit: str) -> list[torch.nn.Module]:
    """The module of every block whose input (``mlp``) or output (``attn``) is the unit, in block order.

    Raises
    ------
    UserError
        An unknown unit, or an architecture whose blocks raydund does not know.
    """
    if unit not in HOOK_TARGETS:
        raise UserError(f"unknown hooked unit {unit!r}; use one of {', '.join(HOOK_UNITS)}")
    arch = getattr(model.config, "model_type", type(model).__name__)
    blocks = next((b for b in (attribute(model, name) for name in BLOCK_LISTS)
                   if isinstance(b, torch.nn.ModuleList)), None)
    if blocks is None:
        raise UserError(f"--unit {unit} is not supported for architecture {arch!r}: no block list "
                        f"({', '.join(BLOCK_LISTS)}) found; use --unit word")
    for target in HOOK_TARGETS[unit]:
        found = [attribute(block, target) for block in blocks]
        if all(isinstance(m, torch.nn.Module) for m in found):
            return found
    raise UserError(f"--unit {unit} is not supported for architecture {arch!r}: its blocks have none of "
                    f"{', '.join(HOOK_TARGETS[unit])}; use --unit word")


def unit_width(model, unit: str) -> int:
    """Neurons per layer of a hooked unit (the MLP's inner size, or the hidden size for ``attn``)."""
    module = hooked_modules(model, unit)[0]
    if unit == "attn":
        return int(model.config.hidden_size)
    weight = module.weight  # Linear [out x in], GPT-2's Conv1D [in x out]
    return int(weight.shape[0] if type(module).__name__ == "Conv1D" else weight.shape[1])


@contextlib.contextmanager
def capture(model, unit: str):
    """Collect the unit of every block during the forward passes inside the ``with``.

    Yields a list that holds, after one forward pass, one ``[batch, seq, width]`` tensor per
    block (the caller clears it between passes).
    """
    captured: list[torch.Tensor] = []
    modules = hooked_modules(model, unit)
    if unit == "mlp":
        handles = [m.register_forward_pre_hook(lambda _m, args: captured.append(args[0])) for m in modules]
    else:
        handles = [m.register_forward_hook(lambda _m, _args, out: captured.append(
            out[0] if isinstance(out, tuple) else out)) for m in modules]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
