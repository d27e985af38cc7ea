"""The paper's interpretability filter: is a unit's decoding made of dictionary words?

A unit passes when at least 7 of its top-10 decoded tokens are dictionary words of 3 or more
letters (sec. 2.2). The dictionary is the paper's (supplement S.2): **SCOWL**, en-US or en-GB,
at the size spell checkers use (60: 85,025 lower-cased words of ASCII letters, inflected forms
included), shipped with the package (``data/assets/scowl``, made by
``scripts/make_scowl_list.py`` from Debian's ``scowl`` package; SCOWL's copyright notice
beside it). ``dictionary="web2"`` keeps the earlier choice: Webster's Second International
(``english-words``'s ``web2`` list, 235k words), inflected forms counted through their lemma
(lemminflect).

Example:
    >>> is_interpretable([" water", " fish", "qzx", " swimming", " boat", " sea", " lake",
    ...                   " river", " xq", "."])
    True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from transformer_lens_mm.core.paper import MIN_WORD_LETTERS, MIN_WORDS
from transformer_lens_mm.errors import ArgumentError

__all__ = [
    "DICTIONARIES",
    "SCOWL_LIST",
    "dictionary_words",
    "is_dictionary_word",
    "is_interpretable",
    "same_word",
]


#: The dictionaries of the filter: "scowl" (the paper's, the default) and "web2".
DICTIONARIES = ("scowl", "web2")
#: The shipped SCOWL list (size 60, en-US + en-GB), inside the package.
SCOWL_LIST = "data/assets/scowl/scowl-60-en-us-gb.txt.gz"


@functools.lru_cache(maxsize=2)
def dictionary_words(dictionary: str = "scowl") -> frozenset[str]:
    """The word list (lower case), loaded once.

    Example:
        >>> len(dictionary_words("scowl"))
        85025
    """
    if dictionary == "scowl":
        import gzip
        from importlib.resources import files

        data = (files("transformer_lens_mm") / SCOWL_LIST).read_bytes()
        return frozenset(gzip.decompress(data).decode().split())
    if dictionary == "web2":
        from english_words import get_english_words_set

        return frozenset(get_english_words_set(["web2"], lower=True, alpha=True))
    raise ArgumentError(f"dictionary must be one of {DICTIONARIES}, got {dictionary!r}")


@functools.lru_cache(maxsize=65536)
def _lemmas(word: str) -> tuple[str, ...]:
    import lemminflect

    return tuple({lemma for lemmas in lemminflect.getAllLemmas(word).values() for lemma in lemmas})


def _clean(token: str) -> str:
    return token.replace("Ġ", " ").replace("▁", " ").strip().lower()


def is_dictionary_word(
    token: str, *, min_len: int = MIN_WORD_LETTERS, dictionary: str = "scowl"
) -> bool:
    """Whether a decoded token is a dictionary word of at least ``min_len`` letters.

    Leading/trailing spaces (and GPT-2's ``Ġ``) are stripped; the rest must be letters only.
    SCOWL lists inflected forms itself; with ``"web2"`` a form counts through its lemma.

    Example:
        >>> is_dictionary_word(" horses"), is_dictionary_word("qzx"), is_dictionary_word(" a")
        (True, False, False)
    """
    word = _clean(token)
    if len(word) < min_len or not word.isascii() or not word.isalpha():
        return False
    words = dictionary_words(dictionary)
    if dictionary == "scowl":
        return word in words
    return word in words or any(lemma in words for lemma in _lemmas(word))


def is_interpretable(
    tokens: Sequence[str],
    *,
    min_words: int = MIN_WORDS,
    min_len: int = MIN_WORD_LETTERS,
    dictionary: str = "scowl",
) -> bool:
    """At least ``min_words`` of ``tokens`` are dictionary words of ``min_len``+ letters
    (``dictionary``: ``"scowl"``, the paper's, or ``"web2"``)."""
    if min_words > len(tokens):
        raise ArgumentError(f"min_words={min_words} is more than the {len(tokens)} tokens given")
    count = sum(is_dictionary_word(t, min_len=min_len, dictionary=dictionary) for t in tokens)
    return count >= min_words


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
