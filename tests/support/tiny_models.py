"""Tiny random-initialised transformers with small trained tokenizers, built offline.

Each builder writes a Hugging Face model folder (config, weights, fast tokenizer) that
``AutoModel``/``AutoTokenizer`` load like any hub model. Vocabularies are small, so
ordinary words split into several subwords: alignment and aggregation get exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

TEXT = [
    "the quick brown fox jumped over the lazy dog",
    "unbelievable tokenization works , really !",
    "stocks fell sharply in heavy trading on monday",
] * 10

ARCHITECTURES = ("bert", "roberta", "xlnet", "gpt2")
#: Decoder LLM families (natural-text tokenisation): tokenizer style and the transformers config class.
DECODERS = {
    "llama": ("sentencepiece", "LlamaConfig"),
    "mistral": ("sentencepiece", "MistralConfig"),
    "gemma": ("gemma", "GemmaConfig"),
    "qwen2": ("qwen", "Qwen2Config"),
    "gpt_neox": ("byte", "GPTNeoXConfig"),
}
#: Qwen2's pre-tokenizer pattern (digits one by one, words with their leading space).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _wordpiece():
    """A fixed WordPiece vocabulary: specials, the corpus's characters, ``##`` characters, a few pieces.

    Written out rather than trained: the WordPiece trainer breaks frequency ties in hash
    order, so a trained vocabulary (and every activation) changes from one process to the next.
    """
    from transformers import BertTokenizerFast

    chars = sorted(set("".join(TEXT).replace(" ", "")))
    pieces = ["the", "over", "fox", "dog", "##ing", "##ed", "##ly", "##s", "un"]
    tokens = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars,
                            *("##" + c for c in chars if c.isalpha()), *pieces])  # in order, once each
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def _byte_bpe(roberta: bool):
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if roberta:
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        return RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                    cls_token="<s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _unigram():
    from transformers import XLNetTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXT, trainers.UnigramTrainer(
        vocab_size=80, unk_token="<unk>",
        special_tokens=["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"]))
    # the trainer numbers its pieces in hash order: renumber them (specials, then by score) so
    # that a token's id, and so its embedding, is the same in every process
    spec = json.loads(tok.to_str())
    special = ["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"]
    scores = dict(map(tuple, spec["model"]["vocab"]))
    spec["model"]["vocab"] = [[p, scores[p]] for p in special] + sorted(
        ([p, s] for p, s in scores.items() if p not in special), key=lambda ps: (-ps[1], ps[0]))
    spec["model"]["unk_id"] = 0
    tok = Tokenizer.from_str(json.dumps(spec))
    sep, cls = tok.token_to_id("<sep>"), tok.token_to_id("<cls>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <sep> <cls>", pair="$A <sep> $B:1 <sep>:1 <cls>:2",
        special_tokens=[("<sep>", sep), ("<cls>", cls)])
    return XLNetTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                              sep_token="<sep>", cls_token="<cls>", pad_token="<pad>", mask_token="<mask>")


def _decoder_tokenizer(style: str):
    """A small trained tokenizer of a decoder family, as the family's real one is built.

    ``sentencepiece`` (Llama, Mistral): BPE with byte fallback, ``▁`` for spaces and
    prepended to the first word (``Metaspace``), ``<s>`` added in front. ``gemma``: the
    same without the prepended ``▁`` and with ``<bos>``. ``qwen``: byte-level BPE behind Qwen2's regex split, no BOS.
    ``byte`` (GPT-NeoX): byte-level BPE without a prefix space, no BOS.
    """
    from transformers import PreTrainedTokenizerFast

    sp = style in ("sentencepiece", "gemma")
    bos = "<bos>" if style == "gemma" else "<s>"
    specials = ["<unk>", bos, "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>" if sp else None, byte_fallback=sp))
    if sp:  # trained on words (SentencePiece never merges across a space), used on whole text
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            prepend_scheme="first" if style == "sentencepiece" else "never", split=True)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
        trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials)
    else:
        if style == "qwen":
            from tokenizers import Regex

            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    if sp:  # byte-fallback pieces <0x00>..<0xFF> for characters outside the vocabulary
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
        spec["pre_tokenizer"]["split"] = False
        tok = Tokenizer.from_str(json.dumps(spec))
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def _decoder_model(arch: str, tok, layers: int, hidden: int, max_positions: int):
    import transformers

    style, config_name = DECODERS[arch]
    common = dict(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=max_positions, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "gpt_neox":
        common.update(rotary_pct=0.5)
    else:
        common.update(num_key_value_heads=1, head_dim=hidden // 2)
    config = getattr(transformers, config_name)(**common)
    return transformers.AutoModel.from_config(config)


def build(arch: str, folder: Path, layers: int = 2, hidden: int = 16, max_positions: int = 64) -> Path:
    """Write a tiny random ``arch`` model plus tokenizer to ``folder``; return it."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2Model,
        RobertaConfig,
        RobertaModel,
        XLNetConfig,
        XLNetModel,
    )

    torch.manual_seed(0)
    if arch == "bert":
        tok = _wordpiece()
        model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=max_positions))
    elif arch == "roberta":
        tok = _byte_bpe(roberta=True)
        model = RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                           num_attention_heads=2, intermediate_size=32,
                                           max_position_embeddings=max_positions + 2,
                                           pad_token_id=tok.pad_token_id))
    elif arch == "xlnet":
        tok = _unigram()
        model = XLNetModel(XLNetConfig(vocab_size=len(tok), d_model=hidden, n_layer=layers, n_head=2,
                                       d_inner=32, pad_token_id=tok.pad_token_id))
    elif arch == "gpt2":
        tok = _byte_bpe(roberta=False)
        model = GPT2Model(GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=2,
                                     n_positions=max_positions, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id))
    elif arch in DECODERS:
        tok = _decoder_tokenizer(DECODERS[arch][0])
        model = _decoder_model(arch, tok, layers, hidden, max_positions)
    else:
        raise ValueError(arch)
    tok.model_max_length = max_positions
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
