"""Benchmark: greedy captioning tokens/s with the KV cache vs Hugging Face ``generate``.

Same weights (a Hugging Face folder loaded both ways), same batch, same soft-prompt tokens and
prompt (given to HF as ``inputs_embeds``), same number of new tokens (no early stop), greedy.
Measured side by side in one process, repeated; min/median/max of the ratio.

    python benchmarks/captioning.py                       # SmolLM2-sized, CPU
    python benchmarks/captioning.py --model gpt2-small    # GPT-2-small-sized
    python benchmarks/captioning.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution_and_sweep import build, summary

from transformer_lens_mm import generate_captions
from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.fast.attention import set_fused_attention
from transformer_lens_mm.fast.bridge import set_fused_bridge
from transformer_lens_mm.fast.norms import set_fused_norms

# views and reshapes launch no kernel
VIEWS = {
    "_reshape_alias",
    "_unsafe_view",
    "alias",
    "as_strided",
    "detach",
    "expand",
    "permute",
    "reshape",
    "select",
    "slice",
    "split",
    "split_with_sizes",
    "squeeze",
    "t",
    "transpose",
    "unbind",
    "unsqueeze",
    "view",
}


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in VIEWS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> int:
    """Tensor operations (other than views) that ``fn`` dispatches: on a GPU, kernel launches.

    Small models on a GPU are bound by launching kernels, not by running them, so this count
    predicts the tokens/s ratio there better than a CPU timing does.
    """
    with _CountOps() as counter:
        fn()
    return counter.count


def count_python_calls(fn) -> int:
    """Python function calls (builtins included) that one call of ``fn`` makes (cProfile's
    count; deterministic, so it compares across processes, e.g. TL 4.3's bridge against TL 3.9's
    hooked path run in its own environment)."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    fn()
    profile.disable()
    return pstats.Stats(profile).total_calls  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--model", choices=["gpt2-small", "smollm2", "tiny"], default="smollm2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-tokens", type=int, default=49)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tl-norms",
        action="store_true",
        help="hooked: TransformerLens's own norm computation instead of the fused one (A/B)",
    )
    parser.add_argument(
        "--tl-attention",
        action="store_true",
        help="hooked: TransformerLens's own eager attention instead of the fused SDPA one (A/B)",
    )
    parser.add_argument(
        "--tl-bridge",
        action="store_true",
        help="bridge: TransformerLens's own norms and attention instead of the fused ones (A/B)",
    )
    args = parser.parse_args()
    if args.tl_bridge and args.api != "bridge":
        parser.error("--tl-bridge switches a TransformerBridge's layers: use it with --api bridge")
    for flag in ("tl_norms", "tl_attention"):
        if getattr(args, flag) and args.api != "hooked":
            parser.error(
                f"--{flag.replace('_', '-')} switches a HookedTransformer's layers: "
                "use it with --api hooked"
            )
    torch.manual_seed(0)
    model, folder = build(args.api, args.device, torch.float32, args.image_tokens, args.model)
    if args.tl_norms:
        set_fused_norms(model, False)
    if args.tl_attention:
        set_fused_attention(model, False)
    if args.tl_bridge:
        set_fused_bridge(model, False)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
    feats = torch.randn(args.batch, args.image_tokens, 1024)
    batch = model.prepare_inputs(image_features=feats, padding_side="left")
    with torch.no_grad():
        embeds = model.embed_images(batch)
        tok_embeds = hf.get_input_embeddings()(batch.tokens.to(args.device))
        inputs_embeds = torch.where(
            batch.image_mask.to(args.device)[..., None],
            torch.zeros_like(tok_embeds),
            tok_embeds,
        )
        inputs_embeds[batch.image_mask.to(args.device)] = embeds.reshape(-1, embeds.shape[-1])
    attention_mask = batch.attention_mask.to(args.device)
    n_new = args.new_tokens

    def ours() -> torch.Tensor:
        caps = generate_captions(
            model, image_features=feats, max_new_tokens=n_new, stop_at_eos=False
        )
        return caps.tokens

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                do_sample=False,
                pad_token_id=0,
            )

    same = torch.equal(ours().cpu(), theirs().cpu())
    ops_ours, ops_hf = count_ops(ours), count_ops(theirs)
    calls_ours, calls_hf = count_python_calls(ours), count_python_calls(theirs)
    ratios, ours_tps, hf_tps = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        theirs()
        t2 = time.perf_counter()
        ours_tps.append(args.batch * n_new / (t1 - t0))
        hf_tps.append(args.batch * n_new / (t2 - t1))
        ratios.append(ours_tps[-1] / hf_tps[-1])
    print(
        f"{args.model}, api={args.api}, device={args.device}, batch {args.batch}, "
        f"{batch.tokens.shape[1]} prompt tokens, {n_new} new tokens; same tokens as HF: {same}"
    )
    print(
        f"tokens/s: ours median {statistics.median(ours_tps):.1f}, "
        f"HF generate median {statistics.median(hf_tps):.1f}"
    )
    print(
        f"tensor operations per caption batch (one kernel each on a GPU): ours {ops_ours}, "
        f"HF generate {ops_hf} ({ops_ours / max(ops_hf, 1):.2f}x)"
    )
    print(
        f"Python calls per caption batch (cProfile): ours {calls_ours}, HF generate {calls_hf} "
        f"({calls_ours / max(calls_hf, 1):.2f}x)"
    )
    print(summary("captioning tokens/s vs HF generate", ratios, ">= 0.9"))


if __name__ == "__main__":
    main()
