"""Targets: the token ``c`` whose logit we explain, per image.

Either given explicitly (a token id or a string), or "the first noun of the generated caption"
through a pluggable noun finder. The default noun finder uses lemminflect's English lexicon
(part-of-speech tables shipped with the package, no download); spaCy is used instead when it and
an English pipeline are installed. A multi-token word uses its first token. ``y_c`` is read at
the position that predicts ``c``: the prompt followed by the caption tokens before ``c``.

Example:
    >>> first_noun(" a red circle on the left.")
    'circle'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.errors import ArgumentError, MissingPackageError, TargetError

__all__ = [
    "LexiconNounFinder",
    "NounFinder",
    "Target",
    "default_noun_finder",
    "first_noun",
    "target_inputs",
    "targets_from_captions",
    "targets_from_tokens",
    "token_id_of",
]

_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_STOP = frozenset(
    "a an the this that these those some any each every no of on in at to from by with for "
    "and or but is are was were be been being it its his her their our your my there here".split()
)


#: A noun finder: returns the first noun of a text (as spelled there), or ``None``.
NounFinder = Callable[[str], str | None]


class LexiconNounFinder:
    """First noun by lexicon look-up (lemminflect's part-of-speech tables).

    Reads the text as runs of modifiers and nouns: a word the lexicon only knows as a noun
    ends the run and is returned ("a red *circle*", "a *man* standing"); a run of words that
    can be adjectives or nouns ("a big blue *square*") returns its last noun-capable word.
    Light and deterministic, not a tagger: with spaCy and an English pipeline installed,
    :func:`default_noun_finder` uses those instead.
    """

    def __init__(self) -> None:
        try:
            import lemminflect
        except ImportError as err:  # pragma: no cover - it is a dependency
            raise MissingPackageError(
                "the default noun finder needs lemminflect: pip install lemminflect"
            ) from err
        self._lemmas = lemminflect.getAllLemmas

    def __call__(self, text: str) -> str | None:
        run: list[str] = []  # modifiers and ambiguous nouns since the last break
        for word in _WORD.findall(text):
            low = word.lower()
            pos = {} if low in _STOP or len(low) < 2 else self._lemmas(low)
            is_noun = "NOUN" in pos
            if is_noun and "ADJ" not in pos and "NUM" not in pos:
                return word
            if is_noun or "ADJ" in pos or "NUM" in pos:
                run.append(word if is_noun else "")
                continue
            nouns = [w for w in run if w]
            if nouns:
                return nouns[-1]
            run = []
        nouns = [w for w in run if w]
        return nouns[-1] if nouns else None


class SpacyNounFinder:
    """First token tagged NOUN (or PROPN) by a spaCy pipeline."""

    def __init__(self, nlp: Any) -> None:
        self.nlp = nlp

    def __call__(self, text: str) -> str | None:
        for tok in self.nlp(text):
            if tok.pos_ in ("NOUN", "PROPN"):
                return tok.text
        return None


def default_noun_finder() -> NounFinder:
    """spaCy's ``en_core_web_sm`` when installed, else :class:`LexiconNounFinder`."""
    try:
        import spacy

        return SpacyNounFinder(spacy.load("en_core_web_sm"))
    except Exception:  # spaCy or the pipeline is missing: the light default
        return LexiconNounFinder()


_DEFAULT: NounFinder | None = None


def first_noun(text: str, finder: NounFinder | None = None) -> str | None:
    """The first noun of ``text`` (``None`` when it has none).

    Args:
        text: A caption.
        finder: A noun finder (default: :func:`default_noun_finder`, built once).
    """
    global _DEFAULT
    if finder is None:
        if _DEFAULT is None:
            _DEFAULT = default_noun_finder()
        finder = _DEFAULT
    return finder(text)


def token_id_of(tokenizer: Any, target: int | str, *, leading_space: bool = True) -> int:
    """Token id of a target given as an id or a word (first token of a multi-token word).

    Args:
        tokenizer: A Hugging Face tokenizer.
        target: A token id, or a word/string.
        leading_space: Encode strings as they appear mid-sentence (``" dog"``).

    Raises:
        ValueError: the id is out of range, or the string is not in the vocabulary.
    """
    vocab_size = len(tokenizer)
    if isinstance(target, int) or (isinstance(target, torch.Tensor) and target.ndim == 0):
        tid = int(target)
        if not 0 <= tid < vocab_size:
            raise TargetError(
                f"target token id {tid} is outside the vocabulary (0..{vocab_size - 1})"
            )
        return tid
    if not isinstance(target, str) or not target.strip():
        raise TargetError(f"a target must be a token id or a non-empty string, got {target!r}")
    text = " " + target.lstrip() if leading_space and not target.startswith(" ") else target
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    if not ids or (unk is not None and ids[0] == unk):
        raise TargetError(
            f"target {target!r} is not in the model's vocabulary (it encodes to {ids}); "
            "pass a token id, or a word the tokenizer knows"
        )
    return int(ids[0])


@dataclass
class Target:
    """The explained token of one image and the text that precedes it."""

    token_id: int  # c
    token: str  # c as a string
    word: str | None  # the noun it was taken from (None for explicit targets)
    prefix_ids: list[int]  # caption tokens before c, appended to the prompt
    caption: str | None = None  # the full caption, when from a caption


def targets_from_tokens(tokenizer: Any, targets: Sequence[int | str]) -> list[Target]:
    """Explicit targets (ids or strings), with no caption prefix."""
    out = []
    for t in targets:
        tid = token_id_of(tokenizer, t)
        out.append(Target(tid, tokenizer.decode([tid]), None, []))
    return out


def targets_from_captions(
    tokenizer: Any,
    caption_tokens: Sequence[Sequence[int]],
    *,
    finder: NounFinder | None = None,
    eos_token_id: int | None = None,
) -> list[Target | None]:
    """First-noun targets from generated caption tokens; ``None`` where a caption has no noun.

    The target is the token that starts the first noun; its prefix is every caption token
    before it, so that ``y_c`` is read where the model predicted ``c`` while captioning.
    """
    out: list[Target | None] = []
    for ids in caption_tokens:
        ids = [int(i) for i in ids]
        if eos_token_id is not None and eos_token_id in ids:
            ids = ids[: ids.index(eos_token_id)]
        text = tokenizer.decode(ids)
        noun = first_noun(text, finder)
        if noun is None:
            out.append(None)
            continue
        start = _word_start(text, noun)
        # first token whose decoded prefix reaches past the noun's first character
        k = 0
        while k < len(ids) and len(tokenizer.decode(ids[: k + 1])) <= start:
            k += 1
        if k >= len(ids):
            out.append(None)
            continue
        out.append(Target(ids[k], tokenizer.decode([ids[k]]), noun, ids[:k], text))
    return out


def _word_start(text: str, word: str) -> int:
    match = re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text)
    return match.start() if match else text.index(word)


def target_inputs(
    model: MultimodalModel,
    base: MultimodalInput,
    targets: Sequence[Target],
) -> MultimodalInput:
    """Append each item's target prefix (caption tokens before ``c``) after its prompt.

    The exact token ids are kept (re-tokenising decoded text can merge tokens differently).
    The result is right-padded, so image positions are unchanged and ``last_positions`` are
    the positions that predict each ``c``; the appended tokens are marked in ``target_mask``
    (the caption so far: the knockout's ``"caption"`` group).
    """
    if len(targets) != len(base):
        raise ArgumentError(
            f"got {len(targets)} targets for {len(base)} images: pass one per image"
        )
    if all(not t.prefix_ids for t in targets):
        return base
    if base.padding_side != "right":
        raise TargetError("target_inputs needs a right-padded input (prepare_inputs default)")
    tok = model.tokenizer
    rows = [
        base.tokens[i, : int(base.last_positions[i]) + 1].tolist() + list(t.prefix_ids)
        for i, t in enumerate(targets)
    ]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    attn = torch.zeros_like(tokens)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    caption = torch.zeros_like(tokens, dtype=torch.bool)  # the caption so far
    for i, t in enumerate(targets):
        end = int(base.last_positions[i]) + 1
        caption[i, end : end + len(t.prefix_ids)] = True
    image = torch.zeros_like(tokens, dtype=torch.bool)
    n = min(width, base.image_mask.shape[1])
    image[:, :n] = base.image_mask[:, :n].cpu()
    prompts = [p + tok.decode(t.prefix_ids) for p, t in zip(base.prompts, targets)]
    device = base.tokens.device
    return MultimodalInput(
        tokens=tokens.to(device),
        attention_mask=attn.to(device),
        image_mask=image.to(device),
        prompts=prompts,
        target_mask=caption.to(device),
        pixel_values=base.pixel_values,
        image_features=base.image_features,
        grid_size=base.grid_size,
        padding_side="right",
        extras=dict(base.extras),
    )
