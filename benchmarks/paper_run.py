"""Benchmark: what the paper's own run costs, sized on random weights of the real shapes.

The paper's per-image procedure (Schwettmann et al. 2023, sec. 2-4) on a GPT-J-6B-shaped LM
(28 layers, d_model 4096, d_mlp 16384, 50400-token vocabulary, parallel attention + MLP) and a
BEiT-L-shaped encoder (timm ``beit_large_patch16_224``, 196 patch tokens of 1024), random
weights, one linear projection, for each batch size:

1. greedy caption (``max_new_tokens``, 20 by default: random weights never stop early, the
   worst case);
2. the search: ``c`` from a caption, attribution of every unit at every image position with
   patch maps, top 100 decoded (``search_batch``);
3. the ablation sweep: the paper's 9 k (0 ... 6400) x top / random = 18 conditions;
4. captions regenerated with the top 6400 units (and as many random ones) zeroed;
5. the soft prompts' nearest tokens against random vectors.

Printed per batch size: seconds per step, images/s, peak memory (CUDA: the allocator's peak;
CPU: resident set), and the projected hours for 1,000 and 5,000 COCO images on this device. A
batch that does not fit is reported with the per-image memory measured at the largest batch
that ran and that batch, not a CUDA out-of-memory trace.

    python benchmarks/paper_run.py --device cuda --dtype bfloat16          # the real shapes
    python benchmarks/paper_run.py --device cuda --dtype bfloat16 --native llava
    python benchmarks/paper_run.py --shape tiny --batches 1 2              # CPU dry run

``--native llava`` sizes the same procedure on a LLaVA-1.5-7B-shaped native VLM instead
(CLIP ViT-L/14 at 336 px, 576 image tokens from layer -2, GELU projector, a Llama-2-7B-shaped LM
with a 32064-token vocabulary; random weights; ``NativeVLMBridge``).

Part ``paper`` of ``benchmarks/run_gpu.sh``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution_and_sweep import DTYPES, PeakMemory, track_rss
from memory import GPTJ_LAYERS, gptj_shaped

from transformer_lens_mm import ImageProjection, generate_captions
from transformer_lens_mm.core.encoders import TimmEncoder
from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.core.paper import ABLATION_KS
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import (
    ablation_captions_step,
    ablation_step,
    soft_prompt_step,
)

ENCODERS = {  # timm name and overrides: BEiT-L/16 at 224 px (LiMBeR's BEiT), or a tiny ViT
    "real": ("beit_large_patch16_224", {}),
    "tiny": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=1, embed_dim=24)),
}


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def build_llava(args: argparse.Namespace):
    """A LLaVA-1.5-7B-shaped native VLM with random weights (``tiny``: the tests' tiny LLaVA),
    built on the device; the tiny processor, resized to the model's image size."""
    from attribution_and_sweep import scratch_dir
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration as Llava

    from transformer_lens_mm.core.native import NativeVLMBridge
    from transformer_lens_mm.data.tiny_vlms import build_tiny_vlm

    dtype = getattr(torch, args.dtype)
    folder = build_tiny_vlm(scratch_dir() / "llava", "llava", chat=False)
    if args.shape == "tiny":
        return NativeVLMBridge.from_pretrained(folder, device=args.device, dtype=dtype), 32
    from transformers import AutoConfig, AutoProcessor

    tiny = AutoConfig.from_pretrained(folder)
    processor = AutoProcessor.from_pretrained(folder)
    processor.image_processor.size = {"shortest_edge": 336}
    processor.image_processor.crop_size = {"height": 336, "width": 336}
    processor.patch_size = 14
    processor.save_pretrained(folder)
    vision = CLIPVisionConfig(
        image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
        num_hidden_layers=24, num_attention_heads=16, projection_dim=768,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=args.layers or 32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
        max_position_embeddings=4096, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )  # fmt: skip
    cfg = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tiny.image_token_index,
        projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.save_pretrained(folder)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(args.device):
            hf = Llava(cfg)
    finally:
        torch.set_default_dtype(default)
    model = NativeVLMBridge.from_pretrained(folder, device=args.device, dtype=dtype, hf_model=hf)
    return model, 336


def build(args: argparse.Namespace):
    if args.native == "llava":
        model, size = build_llava(args)
        return model, model.image_encoder, size
    dtype = getattr(torch, args.dtype)
    layers = args.layers or (GPTJ_LAYERS if args.shape == "real" else 2)
    name, overrides = ENCODERS[args.shape]
    model = gptj_shaped(
        layers, args.api, args.device, dtype, "gptj" if args.shape == "real" else "tiny"
    )
    torch.manual_seed(0)
    encoder = TimmEncoder.from_timm(name, pretrained=False, **overrides)
    model.attach_vision(
        encoder.to(args.device, dtype),
        ImageProjection(encoder.d_image, int(model.cfg.d_model)).to(args.device, dtype),
    )
    return model, encoder, 224 if args.shape == "real" else 32


def one_batch(model, size: int, n: int, args: argparse.Namespace) -> dict[str, float]:
    """The procedure on ``n`` random ``size`` px images: seconds per step."""
    g = torch.Generator().manual_seed(n)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    ks = [k for k in ABLATION_KS if k <= int(model.cfg.n_layers) * int(model.cfg.d_mlp)]
    seconds: dict[str, float] = {}

    def timed(name, fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - t
        return out

    pixels = model.prepare_inputs(images).pixel_values
    timed(
        "caption",
        lambda: generate_captions(
            model, pixel_values=pixels, max_new_tokens=args.max_new_tokens, stop_at_eos=False
        ),
    )
    found = timed(
        "search (attribution, maps, top 100 decoded)",
        lambda: search_batch(
            model,
            indices=range(n),
            pixel_values=pixels,
            captions=["a red circle on the left"] * n,  # c = circle (the caption step is timed)
            settings=SearchSettings(k=100, rank_units=max(ks), max_new_tokens=args.max_new_tokens),
        ),
    )
    if len(found) != n:
        raise RuntimeError(f"only {len(found)} of {n} items were searched: {found.items}")
    timed(
        f"ablation sweep ({2 * len(ks)} conditions)",
        lambda: ablation_step(model, found, ks=ks, n_random=1, seed=0, chunk_size=args.chunk),
    )
    timed(
        f"captions under ablation (k={max(ks)})",
        lambda: ablation_captions_step(
            model, found, k=max(ks), seeds=list(range(n)), max_new_tokens=args.max_new_tokens
        ),
    )
    timed("soft prompts", lambda: soft_prompt_step(model, [found], seed=0))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--shape", default="real", choices=["real", "tiny"])
    parser.add_argument(
        "--layers", type=int, default=None, help="LM layers (default: 28 GPT-J, 32 LLaVA, 2 tiny)"
    )
    parser.add_argument("--api", default=default_api(), choices=["hooked", "bridge"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=16, help="sweep rows per forward")
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--native", choices=["none", "llava"], default="none")
    args = parser.parse_args()
    if args.device == "cpu":
        track_rss()
    model, encoder, size = build(args)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if encoder is not None and args.native == "none":  # the native model's tower is included
        weights += sum(p.numel() * p.element_size() for p in encoder.parameters())
    what = (
        f"LLaVA-1.5-7B-shaped ({args.shape})"
        if args.native == "llava"
        else f"{args.shape}-shaped + {ENCODERS[args.shape][0]}"
    )
    print(
        f"{what}: {int(model.cfg.n_layers)} layers, d_model {int(model.cfg.d_model)}, d_mlp "
        f"{int(model.cfg.d_mlp)}, {model.n_image_tokens} image tokens, {args.dtype}, "
        f"{type(model).__name__}, {args.device}: weights {weights / 2**30:.2f} GiB"
    )
    one_batch(model, size, 1, args)  # warm-up (allocator, kernels)
    fitted: tuple[int, float] | None = None  # largest batch that ran, its per-image memory
    for n in args.batches:
        try:
            with PeakMemory(args.device) as mem:
                seconds = one_batch(model, size, n, args)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as err:
            if not _is_oom(err):
                raise
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
            if fitted is None:
                print(f"batch {n}: does not fit on {args.device} (not even batch 1 ran)")
            else:
                b, per_image = fitted
                print(
                    f"batch {n}: does not fit on {args.device}: measured {per_image:.2f} GiB per "
                    f"image above the weights at batch {b}, the largest batch that ran; use "
                    f"--batches up to {b}"
                )
            break
        total = sum(seconds.values())
        above = mem.peak / 2**30  # PeakMemory: the peak above what was allocated at entry
        fitted = (n, above / n)
        rate = n / total
        hours = ", ".join(f"{m:,} images {m / rate / 3600:.1f} h" for m in args.images)
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        print(
            f"batch {n}: {rate:.3f} images/s, peak {weights / 2**30 + above:.2f} GiB "
            f"({above:.2f} above the weights); projected: {hours}"
        )
        print(f"  per step: {steps}")


if __name__ == "__main__":
    main()
