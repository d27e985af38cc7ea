"""Reference text corpora that install offline, for the contextual lens
(:mod:`transformer_lens_mm.tools.contextual_lens`).

Example:
    >>> texts = reference_corpus("scenes", n=3)
    >>> len(texts)
    3
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from transformer_lens_mm.core.errors import CorpusError

__all__ = ["reference_corpus"]


def reference_corpus(
    source: str | Sequence[str] = "scenes", *, n: int = 500, seed: int = 0
) -> list[str]:
    """Reference texts that install offline.

    Args:
        source: ``"scenes"`` (captions of the project's natural scenes, one per scene: in-domain,
            every concept named), ``"latentlens"`` (a random sample of the 117k general-English
            sentences shipped in the ``latentlens`` package: ``pip install latentlens``), a path
            to a text file (one text per line), or a list of texts.
        n: How many texts (``"scenes"``/``"latentlens"``; a list or file is taken whole).
        seed: The sample's seed.

    Raises:
        CorpusError: an unknown source, a missing package, or no text.

    Example:
        >>> reference_corpus("scenes", n=2)[0].startswith(("a ", "an ", "the "))
        True
    """
    if isinstance(source, str) and source == "scenes":
        from transformer_lens_mm.data.natural_scenes import NaturalSceneSet

        texts = [s.caption for s in NaturalSceneSet(n=n, seed=seed, size=32)]
    elif isinstance(source, str) and source == "latentlens":
        try:
            import latentlens
        except ImportError as err:
            raise CorpusError(
                "the 'latentlens' corpus ships in the latentlens package: pip install latentlens"
            ) from err
        path = Path(latentlens.__file__).parent / "data" / "concepts.txt"
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        lines = [line for line in lines if line]
        texts = random.Random(seed).sample(lines, min(n, len(lines)))
    elif isinstance(source, str):
        path = Path(source)
        if not path.is_file():
            raise CorpusError(
                f"unknown corpus {source!r}: use 'scenes', 'latentlens', a text file (one text "
                "per line) or a list of texts"
            )
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CorpusError("the reference corpus has no text")
    return texts
