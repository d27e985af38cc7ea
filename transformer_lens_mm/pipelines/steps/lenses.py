"""Where translation happens, read per layer: the logit lens of ``c`` at the position that
predicts it, and the contextual lens (each image token's nearest contextual text
representations per layer, beside the logit and embedding lenses and random vectors).

Example:
    >>> contextual_lens_step(model, found, index)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.corpora import reference_corpus
from transformer_lens_mm.pipelines.search import BatchSearch, tag_rows
from transformer_lens_mm.pipelines.steps.registry import (
    Step,
    StepContext,
    register_step,
    require_usable,
)
from transformer_lens_mm.tools.contextual_lens import (
    ContextualIndex,
    build_contextual_index,
    contextual_lens,
)
from transformer_lens_mm.tools.lens import logit_lens

__all__ = ["contextual_lens_step", "logit_lens_step"]


def logit_lens_step(model: MultimodalModel, found: BatchSearch, *, k: int = 3) -> pd.DataFrame:
    """The logit lens of each usable image's ``c`` after every block, at the position that
    predicts it (:func:`~transformer_lens_mm.tools.lens.logit_lens`); the search's schema in
    front."""
    require_usable(found)
    assert found.inputs is not None
    table = logit_lens(
        model, found.inputs, k=k, incl_mid=False, target_ids=[t.token_id for t in found.targets]
    )
    return tag_rows(table, found.rows)


def contextual_lens_step(
    model: MultimodalModel, found: BatchSearch, index: ContextualIndex, *, k: int = 5
) -> pd.DataFrame:
    """Per image token, layer, lens and kind (image / random vectors): whether its ``k``
    nearest tokens name ``c`` and its first one (:func:`~transformer_lens_mm.tools.
    contextual_lens.contextual_lens`); the search's schema in front. ``lens_shares`` of it
    gives the per-layer shares."""
    require_usable(found)
    table = contextual_lens(
        model, found.inputs, index, target_ids=[t.token_id for t in found.targets], k=k
    )
    table["token"] = [tokens[0] for tokens in table.pop("tokens")]
    table = table.drop(columns=["token_ids"])
    table = table.rename(columns={"index": "image_token"})
    return tag_rows(table.rename(columns={"item": "image"}), found.rows)


def contextual_index(ctx: StepContext) -> ContextualIndex:
    """The run's reference index (built once per process, the same after a resume: the
    corpus sample is seeded)."""
    if "contextual_index" not in ctx.state:
        config, n_layers = ctx.config, int(ctx.model.cfg.n_layers)
        layers = sorted({*range(0, n_layers, config.lens_every), n_layers - 1})
        texts = reference_corpus(config.lens_corpus, n=config.lens_texts, seed=config.lens_seed)
        ctx.state["contextual_index"] = build_contextual_index(
            ctx.model, texts, layers=layers, verbose=ctx.verbose
        )
    return ctx.state["contextual_index"]


def _lens_counts(ctx: StepContext, found: BatchSearch, seed: int) -> dict[str, pd.DataFrame]:
    table = contextual_lens_step(ctx.model, found, contextual_index(ctx))
    counts = table.groupby(["layer", "lens", "kind"])["names_c"].agg(["sum", "size"])
    counts = counts.reset_index().rename(columns={"sum": "hits", "size": "n_tokens"})
    counts.insert(0, "index", int(found.rows[0][1]))  # the batch's first item (merge order)
    return {"lens_counts": counts}


def _lens_shares(ctx: StepContext, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    counts = tables["lens_counts"].groupby(["layer", "lens", "kind"])[["hits", "n_tokens"]].sum()
    counts["share"] = counts["hits"] / counts["n_tokens"]
    shares = counts.reset_index()[["layer", "lens", "kind", "share", "n_tokens"]]
    return {"lens_shares": shares}


register_step(
    Step(
        "logit_lens",
        "p(c) and the top tokens after every block at the position that predicts c",
        order=15,
        on=lambda c: bool(c.logit_lens),
        tables=("logit_lens",),
        batch=lambda ctx, found, seed: {"logit_lens": logit_lens_step(ctx.model, found)},
        forwards=lambda c, n_layers: 1,
    )
)
register_step(
    Step(
        "contextual_lens",
        "share of image tokens whose nearest contextual text representations name c, per "
        "layer, beside the logit and embedding lenses and random vectors",
        order=16,
        on=lambda c: c.lens_every > 0,
        tables=("lens_counts",),
        batch=_lens_counts,
        run_tables=("lens_shares",),
        run=_lens_shares,
        forwards=lambda c, n_layers: 1,
    )
)
