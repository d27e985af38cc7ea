"""Quickstart: give a frozen text-only LM sight, train its projection, caption, inspect hooks.

Runs offline in under a minute on 2 CPU cores. Without ``--lm`` it builds a tiny Llama-like LM
from a config and pre-trains it on *text only* (sentences such as "A picture of a red square."),
so that it is a text-only LM that can say the words but has never seen an image. Then the LM is
frozen and only the projection is trained, as in LiMBeR. Point ``--lm`` at any local Hugging
Face causal-LM folder to use a real model instead.

    python examples/quickstart.py --out runs/quickstart
    python examples/quickstart.py --api bridge --steps 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from transformer_lens_mm import (
    ImageEncoder,
    ImageProjection,
    TrainingConfig,
    from_parts,
    generate_captions,
    hook_names,
    train_projection,
)
from transformer_lens_mm.lm_loading import default_api

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.9, 0.1),
}
SHAPES = ["square", "bar"]


def make_scene(colour: str, shape: str, gen: torch.Generator) -> torch.Tensor:
    """A 64x64 image in [0, 1]: a coloured square or bar on a noisy grey background."""
    img = 0.45 + 0.1 * torch.rand(3, 64, 64, generator=gen)
    h, w = (24, 24) if shape == "square" else (10, 40)
    y = int(torch.randint(0, 64 - h, (1,), generator=gen))
    x = int(torch.randint(0, 64 - w, (1,), generator=gen))
    img[:, y : y + h, x : x + w] = torch.tensor(COLOURS[colour])[:, None, None]
    return img.clamp(0, 1)


def make_dataset(n: int, seed: int) -> tuple[list[torch.Tensor], list[str]]:
    gen = torch.Generator().manual_seed(seed)
    images, captions = [], []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        images.append(make_scene(colour, shape, gen))
        captions.append(f" a {colour} {shape}.")
    return images, captions


def build_tiny_lm(folder: Path) -> Path:
    """A tiny Llama-like LM built from a config, with a tokenizer trained on our captions."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["A picture of", *[f" a {c} {s}." for c in COLOURS for s in SHAPES]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        words * 10,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    lm = LlamaForCausalLM(cfg)
    # Text-only pre-training: the LM learns the sentences, never the images.
    texts = [f"<|endoftext|>A picture of a {c} {s}.<|endoftext|>" for c in COLOURS for s in SHAPES]
    ids = fast(texts, return_tensors="pt", padding=True)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(150):
        loss = lm(**ids, labels=ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"text-only pre-training of the tiny LM: final loss {loss.item():.3f}")
    lm.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", help="local Hugging Face causal-LM folder (default: tiny random)")
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--out", default=None, help="folder for checkpoints and the projection")
    args = parser.parse_args()

    lm_dir = Path(args.lm) if args.lm else build_tiny_lm(Path(tempfile.mkdtemp()) / "tiny-llama")
    torch.manual_seed(0)
    encoder = ImageEncoder.from_timm(
        "vit_tiny_patch16_224", img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3
    )
    model = from_parts(
        lm=lm_dir,
        encoder=encoder,
        api=args.api,
        prepend_bos=True,
        projection=ImageProjection(encoder.d_image, 0 or _d_model(lm_dir)),
    )
    print(
        f"model: {type(model).__name__}, {encoder.n_tokens} image tokens "
        f"({encoder.grid_size[0]}x{encoder.grid_size[1]}), prompt {model.prompt!r}"
    )

    images, captions = make_dataset(64, seed=0)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp())
    result = train_projection(
        model,
        images,
        captions,
        out_dir=out,
        config=TrainingConfig(
            steps=args.steps, batch_size=16, lr=1e-2, warmup_steps=10, checkpoint_every=50
        ),
    )
    print(
        f"caption loss: {result.losses[0]:.3f} -> {result.losses[-1]:.3f} "
        f"(projection saved in {out / 'projection'})"
    )

    test_images, test_captions = make_dataset(8, seed=1)
    caps = generate_captions(model, test_images, max_new_tokens=6)
    correct = sum(
        c.strip().rstrip(".") == t.strip().rstrip(".") for c, t in zip(caps.texts, test_captions)
    )
    for text, truth in list(zip(caps.texts, test_captions))[:4]:
        print(f"  caption {text!r:28} truth {truth!r}")
    print(f"held-out exact captions: {correct}/{len(test_captions)}")

    _, cache = model.run_with_cache(images=test_images[:2])
    print(
        "cache:",
        {
            k: tuple(cache[k].shape)
            for k in (hook_names.IMAGE_FEATURES, hook_names.IMAGE_EMBED, hook_names.mlp_post(0))
        },
    )
    print("image positions of item 0:", model.last_input.image_positions[0].tolist())


def _d_model(folder: Path) -> int:
    import json

    cfg = json.loads((folder / "config.json").read_text())
    return int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg["d_model"])


if __name__ == "__main__":
    main()
