"""The paper's interpretability filter: is a unit's decoding made of dictionary words?

A unit passes when at least 7 of its top-10 decoded tokens are dictionary words of 3 or more
letters. The dictionary is Webster's Second International (``english-words``'s ``web2`` list,
235k words); inflected forms ("fishes", "riding") count through their lemma (lemminflect).

Example:
    >>> is_interpretable([" water", " fish", "qzx", " swimming", " boat", " sea", " lake",
    ...                   " river", " xq", "."])
    True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from transformer_lens_mm.core.paper import MIN_WORD_LETTERS, MIN_WORDS

__all__ = ["dictionary_words", "is_dictionary_word", "is_interpretable", "same_word"]


@functools.lru_cache(maxsize=1)
def dictionary_words() -> frozenset[str]:
    """The word list (lower case), loaded once."""
    from english_words import get_english_words_set

    return frozenset(get_english_words_set(["web2"], lower=True, alpha=True))


@functools.lru_cache(maxsize=65536)
def _lemmas(word: str) -> tuple[str, ...]:
    import lemminflect

    return tuple({lemma for lemmas in lemminflect.getAllLemmas(word).values() for lemma in lemmas})


def _clean(token: str) -> str:
    return token.replace("Ġ", " ").replace("▁", " ").strip().lower()


def is_dictionary_word(token: str, *, min_len: int = MIN_WORD_LETTERS) -> bool:
    """Whether a decoded token is a dictionary word of at least ``min_len`` letters.

    Leading/trailing spaces (and GPT-2's ``Ġ``) are stripped; the rest must be letters only.

    Example:
        >>> is_dictionary_word(" horses"), is_dictionary_word("qzx"), is_dictionary_word(" a")
        (True, False, False)
    """
    word = _clean(token)
    if len(word) < min_len or not word.isascii() or not word.isalpha():
        return False
    words = dictionary_words()
    return word in words or any(lemma in words for lemma in _lemmas(word))


def is_interpretable(
    tokens: Sequence[str], *, min_words: int = MIN_WORDS, min_len: int = MIN_WORD_LETTERS
) -> bool:
    """At least ``min_words`` of ``tokens`` are dictionary words of ``min_len``+ letters."""
    if min_words > len(tokens):
        raise ValueError(f"min_words={min_words} is more than the {len(tokens)} tokens given")
    return sum(is_dictionary_word(t, min_len=min_len) for t in tokens) >= min_words


def same_word(token: str, word: str) -> bool:
    """Whether a decoded token is ``word`` up to case, spacing and inflection.

    Example:
        >>> same_word(" Circles", "circle"), same_word(" circ", "circle")
        (True, False)
    """
    a, b = _clean(token), _clean(word)
    if not a or not b:
        return False
    if a == b:
        return True
    return bool(({a, *_lemmas(a)}) & ({b, *_lemmas(b)}))
