"""The paper's search in one call: caption, pick the target, attribute, decode, filter.

:func:`find_multimodal_neurons` runs, per batch of images: greedy captioning (unless targets
are given), the first noun of each caption as the target ``c``, attribution of ``y_c`` to every
MLP unit at the image positions, the top ``k`` ``(layer, unit, position)`` per image, their
decodings through the unembedding and the interpretability filter. Items that cannot be used
(an unreadable image, a caption without a noun, a target outside the vocabulary) are recorded
in ``failures`` and the others go on.

Example:
    >>> found = find_multimodal_neurons(model, images, k=100)  # doctest: +SKIP
    >>> found.units.query("interpretable").head()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.core.images import ImageLike, to_rgb_image
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.tools.attribution import Attribution, attribute
from transformer_lens_mm.tools.targets import (
    NounFinder,
    Target,
    target_inputs,
    targets_from_captions,
    token_id_of,
)
from transformer_lens_mm.tools.words import is_interpretable

__all__ = ["NeuronSearch", "find_multimodal_neurons"]


@dataclass
class NeuronSearch:
    """Result of :func:`find_multimodal_neurons` (image indices are positions in the input)."""

    units: pd.DataFrame  # top-k rows per image: image, rank, layer, unit, position, score, ...
    captions: dict[int, str] = field(default_factory=dict)  # greedy caption per image
    targets: dict[int, Target] = field(default_factory=dict)  # target per usable image
    failures: dict[int, str] = field(default_factory=dict)  # image -> why it was skipped
    attributions: list[tuple[list[int], Attribution]] = field(default_factory=list)
    inputs: list[MultimodalInput] = field(default_factory=list)  # the attributed inputs

    def summary(self) -> str:
        n_ok = len(self.targets)
        share = (
            self.units.groupby("image")["interpretable"].mean().mean() if len(self.units) else 0.0
        )
        return (
            f"{n_ok} images attributed, {len(self.failures)} failed; "
            f"{share:.0%} of top units pass the interpretability filter"
        )


def find_multimodal_neurons(
    model: Any,
    images: Sequence[ImageLike],
    *,
    targets: Sequence[int | str] | None = None,
    prompts: str | Sequence[str] | None = None,
    k: int = 100,
    layers: Sequence[int] | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 20,
    noun_finder: NounFinder | None = None,
    n_tokens: int = 10,
    min_words: int = 7,
    verbose: bool = True,
) -> NeuronSearch:
    """Find each image's top-``k`` MLP units for its caption's first noun.

    Args:
        model: A multimodal model (either TL API).
        images: Images (any ``ImageLike``).
        targets: Explicit target per image (token id or word); default: first caption noun.
        prompts: Prompt(s) (default: the model's).
        k: Units kept per image (the paper: 100).
        layers: Layers to score (default all).
        batch_size: Images per forward/backward.
        max_new_tokens: Caption length limit.
        noun_finder: Noun finder for captions (default: spaCy if installed, else lexicon).
        n_tokens: Decoded tokens per unit (the paper: 10).
        min_words: Interpretability filter: dictionary words needed among ``n_tokens``.
        verbose: Progress bar.
    """
    if targets is not None and len(targets) != len(images):
        raise ValueError(f"got {len(targets)} targets for {len(images)} images: pass one per image")
    if isinstance(prompts, (list, tuple)) and len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images")
    result = NeuronSearch(units=pd.DataFrame())
    tables = []
    for start in tqdm(
        range(0, len(images), batch_size), disable=not verbose, desc="finding neurons"
    ):
        idx = list(range(start, min(start + batch_size, len(images))))
        usable, pil = [], []
        for i in idx:
            try:
                pil.append(to_rgb_image(images[i]))
                usable.append(i)
            except (OSError, ValueError, TypeError) as err:
                result.failures[i] = f"unreadable image: {err}"
        if not usable:
            continue
        item_prompts = (
            prompts if not isinstance(prompts, (list, tuple)) else [prompts[i] for i in usable]
        )
        if targets is None:
            caps = generate_captions(
                model, pil, prompts=item_prompts, max_new_tokens=max_new_tokens
            )
            found = targets_from_captions(
                model.tokenizer,
                caps.tokens.tolist(),
                finder=noun_finder,
                eos_token_id=model.tokenizer.eos_token_id,
            )
            for i, text in zip(usable, caps.texts):
                result.captions[i] = text
        else:
            found = []
            for i in usable:
                try:
                    tid = token_id_of(model.tokenizer, targets[i])
                    found.append(Target(tid, model.tokenizer.decode([tid]), None, []))
                except ValueError as err:
                    found.append(None)
                    result.failures[i] = str(err)
        keep = [j for j, t in enumerate(found) if t is not None]
        for j, t in enumerate(found):
            if t is None and usable[j] not in result.failures:
                result.failures[usable[j]] = (
                    f"no noun in the caption {result.captions.get(usable[j])!r}"
                )
        if not keep:
            continue
        kept_ids = [usable[j] for j in keep]
        kept_targets = [found[j] for j in keep]
        base = model.prepare_inputs(
            [pil[j] for j in keep],
            prompts=(
                item_prompts
                if not isinstance(item_prompts, list)
                else [item_prompts[j] for j in keep]
            ),
        )
        batch = target_inputs(model, base, kept_targets)
        attr = attribute(model, batch, [t.token_id for t in kept_targets], layers=layers, top_k=k)
        table = attr.top_k(min(k, attr.best_scores.shape[1]), model=model, n_tokens=n_tokens)
        table["image"] = [kept_ids[i] for i in table["image"]]
        table["target"] = [kept_targets[kept_ids.index(i)].token for i in table["image"]]
        table["interpretable"] = [is_interpretable(t, min_words=min_words) for t in table["tokens"]]
        tables.append(table)
        for i, t in zip(kept_ids, kept_targets):
            result.targets[i] = t
        result.attributions.append((kept_ids, attr))
        result.inputs.append(batch)
    if tables:
        result.units = pd.concat(tables, ignore_index=True)
    return result
