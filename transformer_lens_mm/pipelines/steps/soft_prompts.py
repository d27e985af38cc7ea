"""The soft prompts' nearest vocabulary tokens against norm-matched random vectors (the
paper's Table 2, sec. 3.1).

Example:
    >>> soft_prompt_step(model, [found], seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.paper import SOFT_PROMPT_TOKENS
from transformer_lens_mm.errors import NoUsableItemError
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.pipelines.steps.registry import Step, register_step
from transformer_lens_mm.tools.decoding import soft_prompt_table
from transformer_lens_mm.tools.words import same_word

__all__ = ["soft_prompt_step"]


def soft_prompt_step(
    model: MultimodalModel,
    searches: Sequence[BatchSearch],
    *,
    seed: int = 0,
    k: int = SOFT_PROMPT_TOKENS,
) -> pd.DataFrame:
    """Nearest tokens of the usable items' soft prompts and of as many norm-matched random
    vectors (the paper's soft-prompt decoding and its baseline), over one or more batches.

    Args:
        model: The model the batches were searched on.
        searches: Batches whose items are decoded together (their random baseline is drawn
            from all their soft-prompt norms at once).
        seed: Seed of the random vectors.
        k: Nearest tokens per vector (the paper: 5).

    Returns:
        :func:`~transformer_lens_mm.tools.decoding.soft_prompt_table`'s table, tagged, with
        ``is_target`` (the token is c).
    """
    usable = [s for s in searches if len(s)]
    if not usable:
        raise NoUsableItemError("no usable item in these batches: nothing to decode")
    with torch.no_grad():
        embeds = torch.cat([model.embed_images(s.base).cpu() for s in usable])  # type: ignore[arg-type]
    rows = [row for s in usable for row in s.rows]
    targets = [t for s in usable for t in s.targets]
    table = soft_prompt_table(model, embeds, k=k, seed=seed)
    table["is_target"] = [
        same_word(tok, targets[i].token) for tok, i in zip(table["token"], table["image"])
    ]
    return tag_rows(table, rows)


register_step(
    Step(
        "soft_prompts",
        "nearest vocabulary tokens of every soft-prompt vector vs as many norm-matched random "
        "vectors",
        order=2,
        on=lambda c: bool(c.soft_prompts),
        tables=("soft_prompts",),
        batch=lambda ctx, found, seed: {
            "soft_prompts": soft_prompt_step(
                ctx.model, [found], seed=seed, k=ctx.config.soft_prompt_tokens
            )
        },
        paper="Table 2, sec. 3.1",
    )
)
