"""The paper's analysis end to end on real pretrained weights: ``tlmm demo --out DIR``.

A frozen text-only LM (SmolLM2-135M by default, or Gemma 3 270M) sees through EfficientNet-Lite0
(frozen, ImageNet) and a shipped projection
(:func:`~transformer_lens_mm.data.pretrained.load_demo_model`; any other model can be passed).
On held-out natural-object scenes (:class:`~transformer_lens_mm.data.natural_scenes.
NaturalSceneSet`: the training record's held-out set of seen combinations; or the shape scenes)
and scikit-image's photos (out of the training distribution), the demo runs every step of the
paper with the same search step and steps as ``tlmm analyze``, then the controls that tell
concept-specific units from generic ones:

1. per batch, the search (:func:`~transformer_lens_mm.pipelines.search.search_batch`): greedy
   captions, their first noun ``c``, attribution ``Z * dy_c/dZ`` of every MLP unit at every
   image position, the top ``k`` per image decoded through the unembedding, the
   interpretability filter, and where ``c`` ranks in those decodings (vs random units);
2. soft prompts decoded to their nearest tokens, against norm-matched random vectors;
3. the logit lens of ``c`` at the position that predicts it;
4. spatial selectivity per concept: IoU of each top unit's 0.95-quantile patch region with the
   mask of the object ``c`` names, against random same-layer units; and the same for background
   concepts (each scene's largest region, sky/grass/water/wall/floor, as the explicit ``c``);
5. category selectivity (supplement S.4): each concept's 20 most frequent interpretable units,
   their mean signed activation over the patches of held-out one-object images of every
   concept;
6. the ablation sweep (top-k vs random units of the same layers, for every k);
7. same- vs cross-concept ablation: each image's top-k zeroed on images of other concepts;
8. generic units (top for the images of most concepts) and per-concept specificity;
9. single-unit ablation of the report's card units, and captions regenerated under ablation
   (the run's first ``n_ablation_captions`` images);
10. where translation happens, two more ways: attention knockout of image -> last in windows
    of layers (against random same-size position groups), and the contextual
    lens (each image token's nearest contextual text representations per layer, beside the
    logit and embedding lenses and random vectors).

It is a preset of the dataset runner (:func:`~transformer_lens_mm.pipelines.analyze.
run_analysis`, :func:`demo_analysis_config`): the search and the per-batch steps are written in
checksummed shards as each batch finishes, so ``tlmm demo --out DIR`` on a folder holding an
unfinished (or finished) demo run resumes it; the card units' effects run after the merge (a
``revisit`` step: the units are chosen over the whole run). Then the demo's own layer: the
scene truth beside the captions, the tables also exported as CSV, ``summary.json`` with the
headline numbers and ``report.html`` (a headline panel, the unit cards, figures and tables).

Example:
    >>> summary = run_demo("runs/demo", DemoConfig(n_scenes=8))  # doctest: +SKIP
    >>> summary["controls"]["specificity_ratio"]["100"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
from safetensors.torch import load_file

from transformer_lens_mm.core.atomic import atomic_write
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.data.demo_set import DemoSet
from transformer_lens_mm.data.natural_scenes import NOUNS
from transformer_lens_mm.data.pretrained import demo_projection_path, load_demo_model
from transformer_lens_mm.errors import NoUsableItemError
from transformer_lens_mm.pipelines.analyze.config import AnalysisConfig
from transformer_lens_mm.pipelines.analyze.runner import run_analysis
from transformer_lens_mm.pipelines.demo.config import DemoConfig, prepare_output
from transformer_lens_mm.pipelines.demo.report import write_report
from transformer_lens_mm.pipelines.demo.summary import (
    describe_model,
    summarise,
    summary_text,
    where_translation,
)
from transformer_lens_mm.pipelines.demo.tables import DemoTables
from transformer_lens_mm.pipelines.experiments import add_spatial_ceiling
from transformer_lens_mm.tools.specificity import with_breadth

__all__ = ["demo_analysis_config", "demo_tables", "run_demo"]


def demo_analysis_config(
    config: DemoConfig, out: str | Path, *, n_units: int | None = None
) -> AnalysisConfig:
    """The runner's config that does what ``config`` asks (``configs/demo_natural_smollm2.toml``
    is this preset written out).

    Args:
        config: The demo's settings.
        out: The run folder.
        n_units: MLP units of the model (``n_layers * d_mlp``): sweep sizes above it are
            dropped (a small model), as the demo always did.

    Example:
        >>> demo_analysis_config(DemoConfig(), "runs/demo").steps[:3]
        ['ablation', 'ablation_captions', 'soft_prompts']
    """
    fits = lambda ks: [int(k) for k in ks if n_units is None or k <= n_units]  # noqa: E731
    ks, cross_ks = fits(config.ks), fits(config.cross_ks)
    steps = ["ablation", "ablation_captions", "soft_prompts", "spatial"]
    steps += ["background"] if config.scene_set == "natural" else []
    steps += ["category_selectivity", "logit_lens", "target_ranks"]
    steps += ["cross_concept"] if cross_ks else []
    steps += ["card_effects"] if config.n_cards else []
    steps += ["knockout"] if config.knockout_window else []
    steps += ["contextual_lens"] if config.lens_every else []
    model = {"demo": True, "lm": config.lm, "scenes": config.scene_set}
    return AnalysisConfig(
        out=str(out),
        data={
            "kind": "demo",
            "scene_set": config.scene_set,
            "n": config.n_scenes,
            "photos": config.photos,
            "n_selectivity": config.n_selectivity,
            "seed": config.seed,
        },
        model={**model, "api": config.api} if config.api else model,
        k=config.k,
        batch_size=config.batch_size,
        shard_batches=1,  # a shard per batch: a resumed demo loses at most one batch
        max_new_tokens=config.max_new_tokens,
        ablation_ks=ks,
        ablation_random=config.n_random,
        ablation_chunk=16,
        ablation_captions_k=max(ks, default=0),
        ablation_captions_n=config.n_ablation_captions,
        cross_concept_ks=cross_ks,
        cross_concept_others=config.cross_others,
        cross_concept_random=1,
        knockout_window=config.knockout_window,
        card_effects=config.n_cards,
        logit_lens=True,
        target_ranks=True,
        soft_prompts=True,
        spatial=True,
        background=config.scene_set == "natural",
        quantile=config.quantile,
        category_selectivity=config.n_selectivity,
        lens_every=config.lens_every,
        lens_corpus=config.lens_corpus,
        lens_texts=config.lens_texts,
        # with "scenes", other scenes than the demo's, whose captions do not describe its images
        lens_seed=config.seed + 1000,
        generic_share=config.generic_share,
        steps=steps,
    )


def _table(out: Path, name: str) -> pd.DataFrame:
    path = out / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def demo_tables(out: str | Path, data: DemoSet, config: DemoConfig, grid: Any) -> DemoTables:
    """The demo's tables from its run folder: the runner's, with the scene truth beside each
    caption (``truth``, ``colour_right``, ``object_right``), each unit's ``generic`` and
    ``breadth``, the caption and background IoU in one ``spatial`` table (``target_from``, and
    the best IoU a map on the encoder's ``grid`` reaches), the card units' effects.

    Example:
        >>> data = DemoSet("natural", 40)  # doctest: +SKIP
        >>> tables = demo_tables("runs/demo", data, DemoConfig(), grid=(7, 7))  # doctest: +SKIP
        >>> tables.captions[["item", "caption", "object_right"]].head()  # doctest: +SKIP
    """
    out = Path(out)
    captions = _table(out, "items").drop(columns=["batch", "target_prefix"], errors="ignore")
    truth = [data.truths.get(n, (None, None, None)) for n in captions["item"]]
    captions["truth"] = [t[0] for t in truth]
    words = [str(c or "").lower().replace(".", " ").split() for c in captions["caption"]]
    # a noun drawn in one colour only is captioned without it (the natural scenes' captions)
    captions["colour_right"] = [
        None if c is None else (c in w or len(NOUNS.get(noun, (c, c))) == 1)
        for (_, c, noun), w in zip(truth, words)
    ]
    captions["object_right"] = [
        None if noun is None else noun in w for (_, _, noun), w in zip(truth, words)
    ]
    units, generic = _table(out, "units"), _table(out, "generic_units")
    if len(units) and len(generic):
        units = with_breadth(units, generic)
    spatial = _table(out, "spatial").assign(target_from="caption")
    background = _table(out, "background")
    if len(background):
        spatial = pd.concat(
            [spatial, background.assign(target_from="background")], ignore_index=True
        )
    if len(spatial) and grid is not None:  # the best IoU a map on the grid reaches on each mask
        spatial = add_spatial_ceiling(spatial, data.searched, tuple(grid), q=config.quantile)
    shares = _table(out, "lens_shares")
    shares.attrs["corpus"] = f"{config.lens_corpus}: {config.lens_texts} texts"
    named = {"captions": captions, "units": units, "spatial": spatial, "lens_shares": shares}
    named["unit_effects"] = _table(out, "card_effects")
    return DemoTables(
        **{name: named[name] if name in named else _table(out, name) for name in DemoTables.names()}
    )


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    overwrite: bool = False,
    model: MultimodalModel | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the whole analysis (or resume it), write results and the report into ``out``;
    return the summary.

    Args:
        out: Output folder: a new one, or one holding a demo run of the same settings (it is
            resumed: finished batches are kept).
        config: What to run (:class:`DemoConfig`).
        overwrite: Start again in an existing folder (the demo's and its run's files are
            replaced; nothing else is touched).
        model: A loaded model (default: ``config.lm`` with the projection shipped for
            ``config.scene_set``, :func:`~transformer_lens_mm.data.pretrained.load_demo_model`).
        verbose: Progress bars and the printed summary.

    Returns:
        The content of ``summary.json``.
    """
    config = config or DemoConfig()
    if model is None:  # a pair without a shipped projection fails before anything is written
        demo_projection_path(config.lm, config.scene_set)
    out = prepare_output(out, overwrite, resume=True)
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    if model is None:
        model = load_demo_model(config.api, lm=config.lm, scenes=config.scene_set)
        seconds["load"] = round(time.perf_counter() - t_start, 2)
    n_units = int(model.cfg.n_layers) * int(model.cfg.d_mlp)
    run_config = demo_analysis_config(config, out, n_units=n_units)
    data = DemoSet(
        config.scene_set,
        config.n_scenes,
        photos=config.photos,
        n_selectivity=config.n_selectivity,
        seed=config.seed,
    )
    run = run_analysis(run_config, model=model, data=data, verbose=verbose, report=False)
    if not run.get("done"):
        raise NoUsableItemError("no image got a caption with a noun: nothing to attribute")
    encoder = model.image_encoder
    tables = demo_tables(out, data, config, None if encoder is None else encoder.grid_size)
    for name in DemoTables.names():  # parquet (the store's format) and a CSV export of each
        tables.write(out, name)
    summary = summarise(config, tables)
    summary.update(where_translation(tables.knockout, tables.lens_shares))
    seconds.update(run["step_seconds"])
    summary["seconds"] = {**seconds, "total": round(time.perf_counter() - t_start, 1)}
    summary["model"] = describe_model(model)
    summary["run"] = {"folder": str(out), "resumed_items": run["skipped_already_done"]}
    text = json.dumps(summary, indent=1, default=float)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    maps = load_file(out / "maps.safetensors")["maps"].float()
    by_id = {it.id: it for it in data.searched}
    captions_by_item = dict(zip(tables.captions["item"], tables.captions["caption"]))
    write_report(
        out / "report.html",
        model,
        config,
        summary,
        tables=tables,
        maps=maps,
        image_of=lambda name: by_id[name].image(),
        caption_of=lambda name: str(captions_by_item.get(name, "")),
    )
    if verbose:
        print(summary_text(summary))
        print(f"report: {out / 'report.html'}")
    return summary
