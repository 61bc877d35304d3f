"""Tokenizers built offline from the words of the prompt files, for the tiny models of every family:
a CLIP BPE tokenizer, a T5 Unigram tokenizer and a Qwen2 byte-level BPE tokenizer. Each is built
deterministically (the `tokenizers` trainers break ties between equally frequent pairs differently
from run to run, which would make two builds of the same tiny model differ); unknown words fall
back to characters (bytes for Qwen2), so every prompt can be encoded."""
from __future__ import annotations

import re

# A base vocabulary for the tiny tokenizers, on top of the words of the prompt files.
BASE_WORDS = ("a an the of on in with and at to two three four one small large big tiny "
              "left right top bottom center middle background circle square triangle star "
              "red green blue yellow orange purple pink white black gray grey brown cyan").split()
_WORD = re.compile(r"[a-z]+")


def words_of(texts: list[str]) -> list[str]:
    words = list(dict.fromkeys(BASE_WORDS))
    for text in texts:
        for w in _WORD.findall(text.lower()):
            if w not in words:
                words.append(w)
    return words


def _merge_left_to_right(pieces_of_words, tokens: list[str]) -> list[tuple[str, str]]:
    """Merges that build each word from its pieces left to right; new tokens are appended."""
    merges: list[tuple[str, str]] = []
    known = set(tokens)
    for pieces in pieces_of_words:
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            if current not in known:
                tokens.append(current)
                known.add(current)
    return merges


def bpe_vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP-style BPE vocabulary: characters, then each word merged left to right."""
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(alphabet) + [c + "</w>" for c in alphabet]
    merges = _merge_left_to_right([list(w[:-1]) + [w[-1] + "</w>"] for w in words], tokens)
    return {token: i for i, token in enumerate(tokens)}, merges


def build_tokenizers(texts: list[str], max_length: int):
    """A CLIP BPE tokenizer and a T5 Unigram tokenizer built offline from the words of `texts`."""
    from transformers import CLIPTokenizer, T5TokenizerFast

    words = words_of(texts)
    vocab, merges = bpe_vocabulary(words)
    clip_tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁" + w, -1.0) for w in words] + [("▁", -4.0)] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    t5_tok = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_length)
    return clip_tok, t5_tok


def build_qwen_tokenizer(texts: list[str], max_length: int, template: str = ""):
    """A Qwen2 byte-level BPE tokenizer (the Qwen2.5-VL tokenizer's kind): every byte, then every
    pre-token of the prompt words and of `template` (the pipeline's chat template, so that its
    system prompt is as many tokens as the real tokenizer makes of it) merged left to right; the
    chat special tokens <|im_start|>, <|im_end|> and <|endoftext|> (end and padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    texts = [template.replace("{}", " ".join(words_of(texts)))] + [" " + " ".join(words_of(texts))] + list(texts)
    pieces: list[str] = []
    for text in texts:
        for chunk in re.split(r"<\|[a-z_]+\|>", text):
            pieces += [p for p, _ in pre.pre_tokenize_str(chunk) if p not in pieces]
    tokens = specials + alphabet
    merges = _merge_left_to_right([list(p) for p in pieces if len(p) > 1], tokens)
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    fast = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                              model_max_length=max_length)
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    return fast
