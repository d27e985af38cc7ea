"""The paper's procedure on a native vision-language model (LLaVA, Gemma 3, Qwen2.5-VL).

    # on a GPU (downloads ~14 GB; memory and time arithmetic: docs/native_vlms.md)
    python examples/10_native_vlm.py --model llava-hf/llava-1.5-7b-hf --device cuda \\
        --dtype float16 --images cat.jpg dog.jpg
    # offline, on a tiny random model of the same class (seconds on a CPU; numbers meaningless)
    python examples/10_native_vlm.py --tiny llava

Steps, as in Schwettmann et al. (2023), with the model's own processor and chat template:
caption each image greedily (KV cache) and take the first noun as c; score every MLP unit at
every image position by Z * dlogit_c/dZ (one backward pass); keep the top k; decode each unit
through the unembedding (W_U W_out, top 10); decode the projector's outputs (soft prompts) to
their nearest tokens; the logit lens at the last position; zero the top-k units vs as many
random units of the same layers (p(c) kept) and recaption under the ablation; draw the top
unit's activation map over the image (hook_image_embed's grid). Writes tables and figures to
--out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from transformer_lens_mm import NativeVLMBridge, find_multimodal_neurons
from transformer_lens_mm.data.tiny_vlms import TINY_KINDS, build_tiny_vlm
from transformer_lens_mm.report.plotting import plot_ablation_curves, plot_unit_map
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.decoding import decode_soft_prompts
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.units import units_of


def images_from(paths: list[str], n: int) -> list:
    """The given image files, else scikit-image's photos, else noise (offline)."""
    if paths:
        return paths
    try:
        import skimage.data

        return [getattr(skimage.data, name)() for name in ("chelsea", "coffee", "astronaut")][:n]
    except ImportError:
        rng = np.random.default_rng(0)
        return [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llava-hf/llava-1.5-7b-hf", help="hub name or folder")
    parser.add_argument("--tiny", choices=TINY_KINDS, default=None, help="a tiny random model")
    parser.add_argument("--images", nargs="*", default=[])
    parser.add_argument("--prompt", default=None, help="the question (default: the class's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--k", type=int, default=100, help="top units kept per image")
    parser.add_argument("--ks", type=int, nargs="+", default=[0, 10, 50, 100])
    parser.add_argument("--out", default="runs/native_vlm")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    where = build_tiny_vlm(out / f"tiny-{args.tiny}", args.tiny) if args.tiny else args.model
    model = NativeVLMBridge.from_pretrained(
        where,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        prompt=args.prompt,
        image_size=32 if args.tiny else 448,
    )
    images = images_from(args.images, 3)
    print(
        f"{model.lm_name}: {model.cfg.n_layers} layers x {model.cfg.d_mlp} MLP units, "
        f"{model.n_image_tokens} image tokens per image on a {model.image_grid} grid"
    )

    # caption -> first noun -> attribution -> top-k -> unit decoding
    found = find_multimodal_neurons(model, images, k=args.k, max_new_tokens=20, maps=True)
    print(found.summary())
    ids = sorted(found.targets)
    if not ids:
        print("no caption had a noun: nothing to attribute")
        return
    found.units.to_csv(out / "units.csv", index=False)
    for i in ids:
        top = found.units[found.units["index"] == i].head(5)
        print(f"image {i}: caption {found.captions[i]!r} -> c = {found.targets[i].word!r}")
        for row in top.itertuples():
            print(f"   L{row.layer}.u{row.unit} at position {row.position}: {row.tokens[:6]}")

    batch = found.inputs[0]
    # soft prompts: the projector's outputs, nearest tokens by cosine
    with torch.no_grad():
        embeds = model.embed_images(batch)
    soft = decode_soft_prompts(model, embeds[0], k=3)
    soft.to_csv(out / "soft_prompts.csv", index=False)
    print("soft prompt 0 nearest tokens:", soft[soft["index"] == 0].token.tolist())

    # the logit lens at each item's last position
    lens = logit_lens(model, batch, k=1, target_ids=[found.targets[i].token_id for i in ids])
    lens.to_csv(out / "logit_lens.csv", index=False)

    # top-k vs random units of the same layers, and captions under the ablation
    ranked = [units_of(found.units, i) for i in ids]
    ks = [k for k in args.ks if k <= min(len(r) for r in ranked)]
    sweep = ablation_sweep(
        model, batch, [found.targets[i].token_id for i in ids], ranked, ks=ks, n_random=1
    )
    print("p(c) kept (mean over images):")
    print(sweep.groupby(["kind", "k"])["rel_p"].mean().unstack(0).round(3))
    plot_ablation_curves(sweep).write_html(out / "ablation.html")
    caps = captions_under_ablation(model, [images[i] for i in ids], ranked[0], max_new_tokens=12)
    print("captions with image 0's top units zeroed:", caps.texts)

    # the top unit's map over the image, on the image-token grid
    if found.maps is not None:
        first = found.units.index[found.units["index"] == ids[0]][0]
        plot_unit_map(images[ids[0]], found.maps[first], model.image_grid).write_html(
            out / "top_unit_map.html"
        )
    print(f"wrote {out}/units.csv, soft_prompts.csv, logit_lens.csv, ablation.html")


if __name__ == "__main__":
    main()
