"""A tiny but real set-up for the examples: a text-only LM, a frozen encoder, a trained projection.

The LM is built from a config and pre-trained on *text only* ("A picture of a red square."); it
is then frozen and only the projection is trained on coloured-shape images, as in LiMBeR. The
trained projection is cached in ``runs/toy`` so the examples after the first start in seconds.
Replace :func:`load_toy_model` by ``from_parts(lm=..., encoder=..., projection=...)`` for a
real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from transformer_lens_mm import (
    ImageProjection,
    TrainingConfig,
    from_parts,
    load_projection,
    train_projection,
)
from transformer_lens_mm.core.encoders import TimmEncoder

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.1),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.95, 0.9, 0.1),
}
SHAPES = ["square", "stripe"]


def make_scene(colour: str, shape: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64x64 image in [0, 1] (a coloured square or stripe on noisy grey) and its object mask."""
    img = 0.45 + 0.1 * torch.rand(3, 64, 64, generator=gen)
    h, w = (24, 24) if shape == "square" else (10, 40)
    y = int(torch.randint(0, 64 - h, (1,), generator=gen))
    x = int(torch.randint(0, 64 - w, (1,), generator=gen))
    img[:, y : y + h, x : x + w] = torch.tensor(COLOURS[colour])[:, None, None]
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[y : y + h, x : x + w] = True
    return img.clamp(0, 1), mask


def make_dataset(n: int, seed: int) -> tuple[list[torch.Tensor], list[str], list[torch.Tensor]]:
    """``n`` scenes cycling through colours and shapes: images, captions, object masks."""
    gen = torch.Generator().manual_seed(seed)
    images, captions, masks = [], [], []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        img, mask = make_scene(colour, shape, gen)
        images.append(img)
        masks.append(mask)
        captions.append(f" a {colour} {shape}.")
    return images, captions, masks


def build_text_only_lm(folder: Path, steps: int = 150) -> Path:
    """A tiny Llama-like LM with its own BPE tokenizer, pre-trained on caption text only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    sentences = ["A picture of", *[f" a {c} {s}." for c in COLOURS for s in SHAPES]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        sentences * 10,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<|endoftext|>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
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
    texts = [f"<|endoftext|>A picture of a {c} {s}.<|endoftext|>" for c in COLOURS for s in SHAPES]
    ids = fast(texts, return_tensors="pt", padding=True)
    labels = ids["input_ids"].masked_fill(ids["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = lm(**ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"text-only pre-training of the tiny LM: final loss {loss.item():.3f}")
    lm.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def build_encoder() -> TimmEncoder:
    torch.manual_seed(0)
    return TimmEncoder.from_timm(
        "vit_tiny_patch16_224", img_size=64, patch_size=16, depth=2, embed_dim=48, num_heads=3
    )


def load_toy_model(
    api: str | None = None,
    *,
    cache: str | Path = "runs/toy",
    steps: int = 400,
    retrain: bool = False,
):
    """The toy multimodal model; builds and trains it into ``cache`` on first use."""
    cache = Path(cache)
    lm_dir = cache / "tiny-lm"
    if retrain or not (lm_dir / "config.json").is_file():
        lm_dir.mkdir(parents=True, exist_ok=True)
        build_text_only_lm(lm_dir)
    d_model = json.loads((lm_dir / "config.json").read_text())["hidden_size"]
    encoder = build_encoder()
    proj_dir = cache / "projection"
    if not retrain and (proj_dir / "projection.safetensors").is_file():
        projection = load_projection(proj_dir)
        return from_parts(lm=lm_dir, encoder=encoder, projection=projection, api=api)
    model = from_parts(
        lm=lm_dir,
        encoder=encoder,
        api=api,
        prepend_bos=True,
        projection=ImageProjection(encoder.d_image, d_model),
    )
    images, captions, _ = make_dataset(64, seed=0)
    train_projection(
        model,
        images,
        captions,
        out_dir=cache / "training",
        resume=not retrain,
        config=TrainingConfig(
            steps=steps, batch_size=16, lr=1e-2, warmup_steps=10, checkpoint_every=100
        ),
    )
    model.image_projection.save(
        proj_dir,
        encoder="vit_tiny (random init, seed 0)",
        lm=str(lm_dir),
        prompt=model.prompt,
        prepend_bos=True,
        n_image_tokens=encoder.n_tokens,
    )
    return model
