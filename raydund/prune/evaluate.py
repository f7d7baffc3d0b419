"""What a pruned model is worth: perplexity, zero-shot SST-2, a POS probe; and its hidden states.

Text is a list of sentences, each a list of words joined by single spaces.

BOS handling: a sentence's first token needs a context to be predicted. If the tokenizer
adds no BOS token itself (GPT-2, SmolLM2), raydund prepends one "prefix" token: the
tokenizer's ``bos_token``, else its ``eos_token`` (GPT-2's ``<|endoftext|>``); if it adds
one (Llama 2/3), that one is kept. The prefix is context only: it is never scored in a
perplexity and its hidden state (huge in LLMs: "massive activations") never enters a
criterion or a probe. Every other token of the sentence is scored, the first word's too.

Perplexity is ``exp(sum NLL / tokens)`` over all scored tokens of all sentences (a
token-weighted mean, float64); batches are right-padded and padding is masked out of
both attention and the loss.
"""

from __future__ import annotations

import numpy as np
import torch

from raydund.errors import UserError


def prefix_ids(tok) -> list[int]:
    """The context token(s) put before every sentence (see the module docstring)."""
    probe = tok("a").input_ids
    if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id:
        return []  # the tokenizer adds BOS itself
    first = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if first is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token to start a sentence with")
    return [first]


def encode(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text with the prefix token first (see :func:`prefix_ids`)."""
    pre = prefix_ids(tok)
    return [pre + tok(t).input_ids for t in texts]


def join(sentences: list[list[str]]) -> list[str]:
    """Sentences (word lists) as text: words joined by single spaces."""
    return [" ".join(words) for words in sentences]


def check_disjoint(calibration: list[str], evaluation: list[str]) -> None:
    """A :class:`UserError` if any calibration text is also an evaluation text."""
    shared = set(calibration) & set(evaluation)
    if shared:
        raise UserError(f"{len(shared)} calibration sentences are also evaluation sentences "
                        f"(e.g. {next(iter(shared))[:60]!r}): calibration and evaluation text must not overlap")


def batches(seqs: list[list[int]], batch_size: int, device="cpu"):
    """Index batches, longest first (less padding); yields (indices, ids, mask) on ``device``."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for a in range(0, len(order), batch_size):
        idx = order[a : a + batch_size]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
            mask[r, : len(seqs[i])] = 1
        yield idx, ids.to(device), mask.to(device)


def token_logprobs(model, seqs: list[list[int]], start: list[int], batch_size: int = 16) -> list[np.ndarray]:
    """Log-probability (float64) of tokens ``seq[start:]`` of each sequence, given the tokens before.

    ``start[i] >= 1``: token ``j`` is predicted from positions ``< j``.
    """
    return _logprobs(model, seqs, start, batch_size)[0]


@torch.no_grad()
def _logprobs(model, seqs: list[list[int]], start: list[int], batch_size: int,
              rows: list[list[int]] | None = None) -> tuple[list[np.ndarray], np.ndarray | None]:
    """:func:`token_logprobs`, and with ``rows`` (positions per sequence) the last hidden state there.

    The last hidden state is the LM head's input (``hidden_states[-1]``), caught by a hook
    in the same forward pass.
    """
    out: list[np.ndarray | None] = [None] * len(seqs)
    vecs: list = [None] * len(seqs)
    seen: list = []
    hook = None if rows is None else model.get_output_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    try:
        for idx, ids, mask in batches(seqs, batch_size, model.device):
            seen.clear()
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
            # log-softmax in float32 (the logits' precision), the per-token values summed in float64
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None])[..., 0].double().cpu()
            for r, i in enumerate(idx):
                out[i] = logp[r, start[i] - 1 : len(seqs[i]) - 1].numpy()
            if rows is not None:
                h = seen[-1].float().cpu()
                for r, i in enumerate(idx):
                    vecs[i] = h[r, rows[i]].numpy()
    finally:
        if hook is not None:
            hook.remove()
    return out, (None if rows is None else np.concatenate(vecs))


def nll(model, tok, texts: list[str], batch_size: int = 16) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of every text's tokens, and how many tokens were scored."""
    seqs = encode(tok, texts)
    return _nll(token_logprobs(model, seqs, _starts(tok, seqs), batch_size))


def _starts(tok, seqs: list[list[int]]) -> list[int]:
    return [len(prefix_ids(tok)) or 1 for _ in seqs]


def _nll(lp: list[np.ndarray]) -> tuple[float, int]:
    return float(-sum(x.sum() for x in lp)), int(sum(len(x) for x in lp))


def _ppl(total: float, count: int) -> float:
    if count == 0:
        raise UserError("no tokens to score")
    return float(np.exp(total / count))


def perplexity(model, tok, texts: list[str], batch_size: int = 16) -> float:
    """Token-level perplexity of ``texts`` (see the module docstring)."""
    return _ppl(*nll(model, tok, texts, batch_size))


def same_ids(tok, sentences: list[list[str]]) -> bool:
    """Whether :func:`perplexity` and :func:`word_vectors` run the same token ids for ``sentences``.

    They do unless the tokenizer adds special tokens itself (e.g. Llama 2's BOS).
    """
    return word_seqs(tok, sentences) == encode(tok, join(sentences))


def perplexity_and_word_vectors(model, tok, sentences: list[list[str]],
                                batch_size: int = 16) -> tuple[float, np.ndarray]:
    """:func:`perplexity` of the joined ``sentences`` and their :func:`word_vectors`, from one forward pass.

    Needs :func:`same_ids` (a :class:`ValueError` otherwise).
    """
    if not same_ids(tok, sentences):
        raise ValueError("the tokenizer adds special tokens: perplexity and word vectors need separate passes")
    seqs, lasts = zip(*(word_token_index(tok, s) for s in sentences))
    lp, vecs = _logprobs(model, list(seqs), _starts(tok, seqs), batch_size, list(lasts))
    return _ppl(*_nll(lp)), vecs


#: The zero-shot SST-2 prompt (``{}``: the sentence) and its label words (class 0, class 1).
SST2_PROMPT = "Review: {}\nSentiment:"
SST2_WORDS = (" negative", " positive")


@torch.no_grad()
def next_token_logprobs(model, seqs: list[list[int]], tokens: list[int], batch_size: int = 16) -> np.ndarray:
    """``[seqs x tokens]`` log-probability (float64) of each of ``tokens`` coming next after each sequence.

    One forward per batch; the LM head runs at each row's last position only
    (``logits_to_keep``), not at every position.
    """
    out = np.zeros((len(seqs), len(tokens)))
    cols = torch.tensor(tokens)
    for idx, ids, mask in batches(seqs, batch_size, model.device):
        last = torch.tensor([len(seqs[i]) - 1 for i in idx], device=ids.device)
        keep = torch.unique(last)  # sorted
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        rows = logits[torch.arange(len(idx), device=ids.device), torch.searchsorted(keep, last)].float()
        out[idx] = torch.log_softmax(rows, dim=-1)[:, cols.to(rows.device)].double().cpu().numpy()
    return out


def prompt_seqs(tok, texts: list[str], prompt: str = SST2_PROMPT) -> list[list[int]]:
    """Token ids of each text in the prompt, prefix first (:func:`label_scores` for one-token label words)."""
    pre = prefix_ids(tok)
    return [pre + tok(prompt.format(t)).input_ids for t in texts]


def one_token_words(tok, words=SST2_WORDS) -> bool:
    """Whether every label word is one token (then :func:`label_scores` runs :func:`prompt_seqs` only)."""
    return all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in words)


def label_scores(model, tok, texts: list[str], prompt: str = SST2_PROMPT, words=SST2_WORDS,
                 batch_size: int = 16) -> np.ndarray:
    """``[texts x labels]`` summed log-probability of each label word's tokens after the prompt.

    When every label word is one token (SmolLM2's " negative"/" positive"), one forward per
    text scores them all (:func:`next_token_logprobs`); otherwise one per (text, label word).
    """
    ctx = prompt_seqs(tok, texts, prompt)
    conts = [tok(w, add_special_tokens=False).input_ids for w in words]
    if all(len(c) == 1 for c in conts):
        return next_token_logprobs(model, ctx, [c[0] for c in conts], batch_size)
    seqs = [c + w for c in ctx for w in conts]
    start = [len(c) for c in ctx for _ in conts]
    lp = token_logprobs(model, seqs, start, batch_size)
    return np.array([x.sum() for x in lp]).reshape(len(texts), len(words))


def zero_shot_accuracy(model, tok, texts: list[str], labels: list[int], **kw) -> float:
    """Accuracy of picking the label word with the highest log-probability (labels index ``words``)."""
    pred = label_scores(model, tok, texts, **kw).argmax(1)
    return float(np.mean(pred == np.asarray(labels)))


def word_token_index(tok, words: list[str]) -> tuple[list[int], list[int]]:
    """Token ids of ``words`` joined by spaces (prefix first) and the index of each word's last subword.

    A token belongs to a word when its character span overlaps the word's; the prefix
    token is never a word's.
    """
    text = " ".join(words)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    pre = prefix_ids(tok)
    spans, pos = [], 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w) + 1
    last = []
    for s, e in spans:
        hits = [j for j, (a, b) in enumerate(enc.offset_mapping) if a < e and b > s]
        if not hits:
            raise UserError(f"the tokenizer gives no token to the word {text[s:e]!r}")
        last.append(len(pre) + hits[-1])
    return pre + list(enc.input_ids), last


@torch.no_grad()
def word_vectors(model, tok, sentences: list[list[str]], batch_size: int = 16) -> np.ndarray:
    """The last hidden state (``hidden_states[-1]``) at each word's last subword, ``[words x hidden]`` float32.

    From the base model (no LM head: the logits are not needed).
    """
    seqs, lasts = zip(*(word_token_index(tok, s) for s in sentences)) if sentences else ((), ())
    out: list = [None] * len(seqs)
    for idx, ids, mask in batches(list(seqs), batch_size, model.device):
        h = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float().cpu()
        for r, i in enumerate(idx):
            out[i] = h[r, lasts[i]].float().numpy()
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


def probe_accuracy(train_x: np.ndarray, train_y: list, test_x: np.ndarray, test_y: list, seed: int = 0) -> float:
    """Test accuracy of a standardised multinomial logistic-regression probe (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=1.0, random_state=seed))
    probe.fit(train_x.astype(np.float64), np.asarray(train_y))
    return float(probe.score(test_x.astype(np.float64), np.asarray(test_y)))


def hidden_states(model, tok, texts: list[str], batch_size: int = 16) -> list[np.ndarray]:
    """Per-token residual stream entering each block, ``H[l]`` for ``l = 0..L`` (``[tokens x hidden]`` float32).

    ``H[0]`` is the embedding output (block 0's input), ``H[l]`` the input of block ``l`` and
    ``H[L]`` the last block's output before the final norm, all taken with forward hooks on
    the blocks, so that ``H[l+1] - H[l]`` is exactly block ``l``'s residual update.
    Prefix and padding tokens are left out; rows follow the texts.
    """
    seqs = encode(tok, texts)
    skip = len(prefix_ids(tok))
    return _stream(model, seqs, [list(range(skip, len(s))) for s in seqs], batch_size)


def block_inputs(model, tok, texts: list[str], batch_size: int = 16) -> list[list[torch.Tensor]]:
    """Per batch of :func:`perplexity`'s batching of ``texts``: the padded stream entering each block.

    For :func:`raydund.prune.surgery.resumed` (memory: batches x blocks x padded tokens x hidden).
    """
    return seq_block_inputs(model, encode(tok, texts), batch_size)


def word_seqs(tok, sentences: list[list[str]]) -> list[list[int]]:
    """The token ids :func:`word_vectors` runs for ``sentences`` (for :func:`seq_block_inputs`)."""
    return [word_token_index(tok, s)[0] for s in sentences]


@torch.no_grad()
def seq_block_inputs(model, seqs: list[list[int]], batch_size: int = 16,
                     base: tuple[int, ...] = ()) -> list[list[torch.Tensor | None]]:
    """:func:`block_inputs` of token id sequences, batched as every function here batches them.

    With ``base``: the stream entering each block of the model without blocks ``base``
    (``None`` at the indices of ``base``), for :func:`raydund.prune.surgery.resumed`.
    """
    from raydund.prune.surgery import blocks, check_drop, dropped, num_blocks

    total = num_blocks(model)
    kept = [i for i in range(total) if i not in set(check_drop(base, total))]
    seen: list = []
    out = []
    with dropped(model, base) as m:
        hooks = [b.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]),
                                             with_kwargs=True) for b in blocks(m)]
        try:
            for _idx, ids, mask in batches(seqs, batch_size, m.device):
                seen.clear()
                m(input_ids=ids, attention_mask=mask, use_cache=False)
                row: list = [None] * total
                for i, h in zip(kept, seen):
                    row[i] = h
                out.append(row)
        finally:
            for h in hooks:
                h.remove()
    return out


def word_hidden_states(model, tok, sentences: list[list[str]], batch_size: int = 16) -> list[np.ndarray]:
    """:func:`hidden_states` at each word's last subword (:func:`word_token_index`): ``[words x hidden]`` per level."""
    seqs, lasts = zip(*(word_token_index(tok, s) for s in sentences))
    return _stream(model, list(seqs), list(lasts), batch_size)


@torch.no_grad()
def _stream(model, seqs: list[list[int]], rows: list[list[int]], batch_size: int) -> list[np.ndarray]:
    from raydund.prune.surgery import blocks

    seen: list = []

    def pre(module, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    def post(module, args, kwargs, output):
        seen.append(output[0] if isinstance(output, tuple) else output)

    hooks = [b.register_forward_pre_hook(pre, with_kwargs=True) for b in blocks(model)]
    hooks.append(blocks(model)[-1].register_forward_hook(post, with_kwargs=True))
    out: list = [None] * len(seqs)
    try:
        for idx, ids, mask in batches(seqs, batch_size, model.device):
            seen.clear()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            for r, i in enumerate(idx):
                out[i] = [h[r, rows[i]].float().cpu().numpy() for h in seen]
    finally:
        for h in hooks:
            h.remove()
    return [np.concatenate([o[level] for o in out]) for level in range(len(out[0]))]
