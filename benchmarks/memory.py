"""Benchmark: peak memory of full attribution on a GPT-J-6B-shaped model, measured.

GPT-J-6B's exact shapes (d_model 4096, 16 heads of 256, d_mlp 16384, rotary dim 64, parallel
attention + MLP, 50400-token vocabulary), built from a config with random weights, batch 4 x 199
tokens (196 image tokens). The peak above the loaded weights is measured for full attribution
(all layers, all units, image positions, top-k kept) and for a plain forward + backward of
``y_c`` (gradients w.r.t. activations only), at each number of layers asked for. The per-layer
slope (least squares) then gives the 28-layer model: weights + intercept + 28 x slope.

    python benchmarks/memory.py                                   # CPU, fp32, 1-3 layers
    python benchmarks/memory.py --device cuda --dtype bfloat16 --layers 28   # the real size

On CPU the peak is sampled resident memory; on CUDA it is the allocator's peak. This CPU has no
fast bf16 matmul, so CPU runs use fp32; activation memory halves in bf16 (the scores are
accumulated in fp32 either way, and top-k keeps only a few MB of them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attribution_and_sweep import DTYPES, PeakMemory, plain_backward, scratch_dir, track_rss
from helpers import build_tokenizer

from transformer_lens_mm import ImageProjection, attribute, from_parts
from transformer_lens_mm.core.lm_loading import default_api

GPTJ_LAYERS = 28
# GPT-J-6B's shapes; "tiny" only checks that the script runs (tests/test_benchmarks.py)
SHAPES = {
    "gptj": dict(d_model=4096, n_heads=16, d_mlp=16384, d_vocab=50400, rotary_dim=64),
    "tiny": dict(d_model=64, n_heads=4, d_mlp=256, d_vocab=64, rotary_dim=8),
}


def gptj_shaped(n_layers: int, api: str, device: str, dtype: torch.dtype, shape: str = "gptj"):
    d = SHAPES[shape]
    from transformers import AutoTokenizer

    folder = scratch_dir()
    build_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if api == "hooked":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=n_layers,
            d_model=d["d_model"],
            d_head=d["d_model"] // d["n_heads"],
            n_heads=d["n_heads"],
            d_mlp=d["d_mlp"],
            d_vocab=d["d_vocab"],
            n_ctx=2048,
            act_fn="gelu_new",
            normalization_type="LN",
            positional_embedding_type="rotary",
            rotary_dim=d["rotary_dim"],
            rotary_adjacent_pairs=True,
            parallel_attn_mlp=True,
            original_architecture="GPTJForCausalLM",
            device=device,
            dtype=dtype,
            seed=0,
        )
        with torch.device(device):  # initialise 6B parameters where they will live
            lm = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True)
    else:  # the bridge wraps a Hugging Face GPT-J built in place (only its config is saved)
        from transformers import GPTJConfig, GPTJForCausalLM

        from transformer_lens_mm.core.lm_loading import load_bridge

        cfg = GPTJConfig(
            n_layer=n_layers,
            n_embd=d["d_model"],
            n_head=d["n_heads"],
            n_inner=d["d_mlp"],
            vocab_size=d["d_vocab"],
            rotary_dim=d["rotary_dim"],
        )
        cfg.save_pretrained(folder)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                hf_model = GPTJForCausalLM(cfg).eval()
        finally:
            torch.set_default_dtype(default)
        lm = load_bridge(folder, device=device, dtype=dtype, hf_model=hf_model, tokenizer=tokenizer)
    return from_parts(
        lm=lm,
        encoder=None,
        projection=ImageProjection(1024, d["d_model"]),
        device=device,
        dtype=dtype,
    )


def measure(n_layers: int, args: argparse.Namespace) -> dict[str, float]:
    dtype = getattr(torch, args.dtype)
    model = gptj_shaped(n_layers, args.api, args.device, dtype, args.shape)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    feats = torch.randn(args.batch, 196, 1024)
    batch = model.prepare_inputs(image_features=feats)
    targets = [5] * args.batch
    forward_backward = plain_backward(model, batch, targets)

    def attribution() -> None:
        attribute(model, batch, targets, top_k=100, keep_activations=False)

    out: dict[str, list[int]] = {"fb": [], "att": []}
    for _ in range(args.repeats):
        for key, fn in (("fb", forward_backward), ("att", attribution)):
            with PeakMemory(args.device) as mem:
                fn()
            out[key].append(mem.peak)
    return {
        "weights": weights,
        "fb": statistics.median(out["fb"]),
        "att": statistics.median(out["att"]),
        "tokens": int(batch.tokens.numel()),
    }


def fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through (xs, ys): (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main() -> None:
    track_rss()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gptj")
    args = parser.parse_args()
    gib = 2**30
    rows = []
    for n in args.layers:
        r = measure(n, args)
        rows.append((n, r))
        print(
            f"{n:>2} layers ({args.api}, {args.dtype}, batch {args.batch}, {r['tokens']} tokens): "
            f"weights "
            f"{r['weights'] / gib:.2f} GiB; peak above weights: forward+backward "
            f"{r['fb'] / gib:.3f} GiB, attribution {r['att'] / gib:.3f} GiB "
            f"({r['att'] / max(r['fb'], 1):.2f}x); weights + attribution "
            f"{(r['weights'] + r['att']) / gib:.2f} GiB",
            flush=True,
        )
    if len(rows) > 1:
        xs = [n for n, _ in rows]
        a0, a1 = fit(xs, [r["att"] for _, r in rows])
        w0, w1 = fit(xs, [r["weights"] for _, r in rows])
        scale = 0.5 if args.dtype == "float32" else 1.0  # activations and weights in bf16
        weights = (w0 + GPTJ_LAYERS * w1) * scale
        act = (a0 + GPTJ_LAYERS * a1) * scale
        print(
            f"per layer: attribution +{a1 / gib:.3f} GiB, "
            f"weights +{w1 / gib:.3f} GiB ({args.dtype})"
        )
        print(
            f"GPT-J-6B ({GPTJ_LAYERS} layers) in bf16 at batch {args.batch}, from the fit"
            f"{' halved from fp32' if scale != 1 else ''}: weights {weights / gib:.1f} GiB + "
            f"attribution {act / gib:.1f} GiB = {(weights + act) / gib:.1f} GiB "
            f"(goal: fits 80 GB = {80e9 / gib:.1f} GiB)"
        )
        per_image = act / args.batch  # activations grow linearly with the batch
        print(f"largest batch in 80 GB by the same fit: about {int((80e9 - weights) // per_image)}")


if __name__ == "__main__":
    main()
