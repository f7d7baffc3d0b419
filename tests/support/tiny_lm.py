"""Tiny random-initialised causal LMs (Llama, Qwen2, Mistral, GPT-2, GPT-NeoX) for the pruning tests.

Each shares the byte-level BPE tokenizer of :mod:`tests.support.tiny_models` (GPT-2 style,
``<s>`` as BOS, no BOS added by the tokenizer itself) and is saved as a normal model folder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.support.tiny_models import _byte_bpe

FAMILIES = ("llama", "qwen2", "mistral", "gpt2", "gpt_neox")


def tokenizer():
    """The shared tiny byte-level BPE tokenizer, with ``<pad>`` as padding token."""
    tok = _byte_bpe(roberta=False)
    tok.pad_token = "<pad>"
    return tok


def model(family: str, layers: int = 6, hidden: int = 16, vocab: int = 300, seed: int = 0):
    """A tiny random causal LM of ``family`` in eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=2048)
    if family == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=1, **common))
    elif family == "qwen2":
        m = tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=1, **common))
    elif family == "mistral":
        m = tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=1, **common))
    elif family == "gpt2":
        m = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=2,
                                             n_positions=2048))
    elif family == "gpt_neox":
        m = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common))
    else:
        raise ValueError(family)
    return m.eval()


def save(family: str, folder: Path, layers: int = 6, hidden: int = 16) -> Path:
    """Write a tiny ``family`` LM plus the tokenizer to ``folder``; return it."""
    tok = tokenizer()
    m = model(family, layers, hidden, vocab=len(tok))
    folder.mkdir(parents=True, exist_ok=True)
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
