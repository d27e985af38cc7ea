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

from transformer_lens_mm.errors import CorpusError

__all__ = ["GENERAL", "reference_corpus"]


GENERAL = Path(__file__).parent / "assets" / "corpora" / "general-en.txt.gz"


def reference_corpus(
    source: str | Sequence[str] = "general", *, n: int = 500, seed: int = 0
) -> list[str]:
    """Reference texts that install offline.

    Args:
        source: ``"general"`` (3,000 general-English sentences shipped with this package: a
            seeded sample of latentlens's ``concepts.txt``, MIT, made by
            ``scripts/make_reference_corpus.py``), ``"scenes"`` (captions of the project's
            natural scenes, one per scene: in-domain, short, every concept named: too few
            distinct contexts for a baseline that means much), ``"latentlens"`` (a random
            sample of all 117k sentences of the ``latentlens`` package: ``pip install
            latentlens``), a path to a text file (one text per line), or a list of texts.
        n: How many texts (a list or a file is taken whole).
        seed: The sample's seed.

    Raises:
        CorpusError: an unknown source, a missing package, or no text.

    Example:
        >>> reference_corpus("scenes", n=2)[0].startswith(("a ", "an ", "the "))
        True
    """
    if isinstance(source, str) and source == "general":
        import gzip

        with gzip.open(GENERAL, "rt", encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        texts = random.Random(seed).sample(lines, min(n, len(lines)))
    elif isinstance(source, str) and source == "scenes":
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
                f"unknown corpus {source!r}: use 'general', 'scenes', 'latentlens', a text file "
                "(one text per line) or a list of texts"
            )
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        texts = [str(t) for t in source]
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CorpusError("the reference corpus has no text")
    return texts
