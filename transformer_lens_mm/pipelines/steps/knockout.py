"""Attention knockout: p(c) with the image positions cut off from the position that predicts
``c`` in windows of layers, against random position groups (:mod:`~transformer_lens_mm.
tools.knockout`).

Example:
    >>> knockout_step(model, found, window=5, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.pipelines.steps.registry import Step, register_step, require_usable
from transformer_lens_mm.tools.knockout import knockout_table

__all__ = ["knockout_step"]


def knockout_step(
    model: MultimodalModel,
    found: BatchSearch,
    *,
    window: int = 5,
    pairs: Sequence[tuple[str, str]] = (("image", "last"),),
    n_controls: int = 1,
    seed: int = 0,
    chunk_size: int = 8,
) -> pd.DataFrame:
    """Attention knockout of each image's flows in windows of ``window`` layers (clipped to the
    model), with ``n_controls`` random same-size position groups; the search's schema in front
    (:func:`~transformer_lens_mm.tools.knockout.knockout_table`'s columns after it)."""
    require_usable(found)
    n_layers = int(model.cfg.n_layers)
    table = knockout_table(
        model,
        found.inputs,
        [t.token_id for t in found.targets],
        pairs=pairs,
        window=min(window, n_layers),
        stride=min(window, n_layers),
        n_controls=n_controls,
        seed=seed,
        chunk_size=chunk_size,
    )
    attrs = dict(table.attrs)
    out = tag_rows(table.rename(columns={"item": "image"}), found.rows)
    out.attrs.update(attrs)
    return out


register_step(
    Step(
        "knockout",
        "image -> last attention cut in windows of layers vs random position groups",
        order=17,
        on=lambda c: c.knockout_window > 0,
        tables=("knockout",),
        batch=lambda ctx, found, seed: {
            "knockout": knockout_step(
                ctx.model, found, window=ctx.config.knockout_window, seed=seed
            )
        },
        # windows x (cut + control), one clean forward
        forwards=lambda c, n_layers: (
            None if n_layers is None else 1 + 2 * -(-n_layers // max(c.knockout_window, 1))
        ),
    )
)
