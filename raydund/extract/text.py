"""Decoder LLMs: which models are decoders, and words of natural text mapped to their tokens.

Encoders (BERT, RoBERTa, XLNet) are given pre-split words (``is_split_into_words=True``).
A decoder LLM must see the text it was trained on instead: for byte-level BPE (GPT-2,
SmolLM2, Qwen2) pre-split words lose their leading space (``world``, not ``Ġworld``), and
SentencePiece (Llama, Gemma, Mistral) marks word starts with ``▁`` the same way. So for a
decoder a sentence is tokenised as its words joined by single spaces, and each token is
mapped back to a word through the fast tokenizer's offset mapping:

- a token belongs to the word holding its last non-space character; the space before a
  word belongs to that word, so a token made of a space alone (GPT-2's ``Ġ`` before a
  digit) is the word's first subword;
- special tokens (BOS ``<s>`` of Llama, any token the tokenizer adds, and every token
  with an empty offset span) belong to no word.

Special tokens are those the tokenizer adds by default: Llama, Mistral and Gemma add their
BOS (the model was trained with it; it is never a word), GPT-2, SmolLM2 and Qwen2 add none.
No Ray, no model here.
"""

from __future__ import annotations

import numpy as np

#: ``config.model_type`` of decoder-only models whose sentences are tokenised as natural text.
DECODER_TYPES = frozenset({
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
    "gemma", "gemma2", "gemma3_text", "phi", "phi3", "olmo", "olmo2", "granite", "stablelm", "starcoder2",
    "falcon", "bloom", "opt", "cohere", "smollm3",
})


def is_decoder(config) -> bool:
    """Whether a model config is a decoder-only LLM (its known type, or a ``*ForCausalLM`` architecture).

    Encoders saved with a causal-LM head (``BertLMHeadModel``) are not decoders: only the
    model type decides for them.
    """
    if getattr(config, "model_type", None) in DECODER_TYPES:
        return True
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", None) in (
            "bert", "roberta", "xlm-roberta", "xlnet", "distilbert", "electra", "deberta", "deberta-v2",
            "camembert", "albert", "mpnet"):
        return False
    return any(str(a).endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or ()))


def sentence_text(words: list[str]) -> tuple[str, np.ndarray]:
    """The sentence as text (words joined by single spaces) and, per character, the word it belongs to.

    The space before word ``i`` belongs to word ``i``; a space inside a word (``"New York"``
    as one word) to that word.
    """
    text = " ".join(words)
    owner = np.empty(len(text), dtype=np.int64)
    pos = 0
    for i, word in enumerate(words):
        start = pos - 1 if i else 0
        owner[start : pos + len(word)] = i
        pos += len(word) + 1
    return text, owner


def offsets_to_word_ids(offsets, special_mask, text: str, char_owner: np.ndarray) -> list[int | None]:
    """One word index (or None) per token, from the tokenizer's character offsets.

    A token belongs to the word of its last non-space character; a token of spaces only
    to the word of its last character (the word after the space).

    Parameters
    ----------
    offsets : list of (int, int)
        ``offset_mapping`` of one encoded sequence (character spans, end exclusive).
    special_mask : list of int
        ``special_tokens_mask``: 1 for tokens the tokenizer added.
    text, char_owner : str, numpy.ndarray
        The sentence and, per character, its word (:func:`sentence_text`).
    """
    out: list[int | None] = []
    for (start, end), special in zip(offsets, special_mask):
        end = min(end, len(text))
        if special or end <= start:
            out.append(None)
            continue
        last = end - 1
        while last > start and text[last].isspace():
            last -= 1
        out.append(int(char_owner[last]))
    return out


def encode_natural(tokenizer, sentences: list[list[str]], add_special_tokens: bool = True
                   ) -> list[tuple[list[int], list[int | None]]]:
    """(input ids, word index per token) of each sentence, tokenised as natural text.

    Parameters
    ----------
    tokenizer
        A fast tokenizer (offsets come from its Rust backend).
    sentences : list of list of str
        Words of each sentence.
    add_special_tokens : bool
        Add what the tokenizer adds by default (Llama's BOS); those tokens are never words.
    """
    texts, owners = zip(*(sentence_text(words) for words in sentences)) if sentences else ((), ())
    enc = tokenizer(list(texts), add_special_tokens=add_special_tokens, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    return [(enc["input_ids"][i], offsets_to_word_ids(enc["offset_mapping"][i], enc["special_tokens_mask"][i],
                                                      texts[i], owners[i]))
            for i in range(len(sentences))]
