"""Quickstart: give a frozen text-only LM sight, train its projection, caption, inspect hooks.

Runs offline in under a minute on 2 CPU cores. It builds a tiny Llama-like LM from a config and
pre-trains it on *text only* (sentences such as "A picture of a red square."), so that it can
say the words but has never seen an image. Then the LM is frozen and only the projection is
trained, as in LiMBeR (see toy_model.py). For a real model use ``from_parts(lm=..., ...)``.

    python examples/quickstart.py
    python examples/quickstart.py --api bridge --steps 600 --out runs/quickstart
"""

from __future__ import annotations

import argparse

from toy_model import load_toy_model, make_dataset

from transformer_lens_mm import generate_captions, hook_names
from transformer_lens_mm.core.lm_loading import default_api


def main() -> None:
    parser = argparse.ArgumentParser(description="transformer_lens_mm quickstart")
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--steps", type=int, default=400, help="projection training steps")
    parser.add_argument("--out", default="runs/quickstart", help="folder for the toy model")
    args = parser.parse_args()

    model = load_toy_model(args.api, cache=args.out, steps=args.steps, retrain=True)
    enc = model.image_encoder
    print(
        f"model: {type(model).__name__}, {enc.n_tokens} image tokens "
        f"({enc.grid_size[0]}x{enc.grid_size[1]}), prompt {model.prompt!r}"
    )

    images, captions, _ = make_dataset(8, seed=1)  # held out: another seed
    caps = generate_captions(model, images, max_new_tokens=6)
    exact = sum(c.strip() == t.strip() for c, t in zip(caps.texts, captions))
    colour = sum(t.split()[1] in c for c, t in zip(caps.texts, captions))
    for text, truth in list(zip(caps.texts, captions))[:4]:
        print(f"  caption {text!r:24} truth {truth!r}")
    print(
        f"held-out exact captions: {exact}/{len(captions)}; colour right: {colour}/{len(captions)}"
    )

    _, cache = model.run_with_cache(images=images[:2])
    shapes = {
        k: tuple(cache[k].shape)
        for k in (hook_names.IMAGE_FEATURES, hook_names.IMAGE_EMBED, hook_names.mlp_post(0))
    }
    print("cache:", shapes)
    print("image positions of item 0:", model.last_input.image_positions[0].tolist())
    print(f"projection saved in {args.out}/projection")


if __name__ == "__main__":
    main()
