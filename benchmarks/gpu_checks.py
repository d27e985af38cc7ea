"""GPU checks (run on a CUDA machine): numerics of injection, attribution and captioning on the
GPU against the CPU / Hugging Face references, and bf16 attribution against fp32.

    python benchmarks/gpu_checks.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import build_encoder, build_hf_lm, build_projection, load_hf, random_images

from transformer_lens_mm import attribute, from_parts, generate_captions


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu" for a dry run
    if dev == "cuda":
        assert torch.cuda.is_available(), "needs a GPU"
        print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    with tempfile.TemporaryDirectory(prefix="tlmm-gpu-") as tmp:
        run(dev, Path(tmp))


def run(dev: str, root: Path) -> None:
    for kind in ("gptj", "llama"):
        folder = build_hf_lm(root / f"tiny-{kind}", kind)
        enc, proj = build_encoder(), build_projection()
        gpu = from_parts(lm=folder, encoder=enc, projection=proj, api="bridge", device=dev)
        cpu = from_parts(
            lm=folder, encoder=build_encoder(), projection=build_projection(), api="bridge"
        )
        images = random_images(3)
        batch = gpu.prepare_inputs(images, prompts=["A picture of", "A photo of a", "A picture of"])
        assert batch.tokens.device.type == dev
        logits = gpu(batch)
        hf = load_hf(folder).to(dev)
        with torch.no_grad():
            emb = hf.get_input_embeddings()(batch.tokens).clone()
            soft = gpu.image_projection(gpu.image_encoder(batch.pixel_values))
            for i in range(3):
                emb[i, batch.image_positions[i]] = soft[i]
            ref = hf(inputs_embeds=emb, attention_mask=batch.attention_mask).logits
        real = batch.attention_mask.bool()
        print(
            f"[{kind}] injected logits vs HF inputs_embeds on {dev}: max |diff| "
            f"{(logits[real] - ref[real]).abs().max().item():.2e}"
        )
        a_gpu = attribute(gpu, batch, [12, 13, 14])
        a_cpu = attribute(cpu, cpu.prepare_inputs(images, prompts=batch.prompts), [12, 13, 14])
        print(
            f"[{kind}] attribution {dev} vs cpu: max |diff| "
            f"{(a_gpu.scores - a_cpu.scores).abs().max().item():.2e} "
            f"(scale {a_cpu.scores.abs().max().item():.2e})"
        )
        caps = generate_captions(gpu, images, max_new_tokens=6, stop_at_eos=False)
        ref_caps = generate_captions(
            gpu, images, max_new_tokens=6, stop_at_eos=False, use_kv_cache=False
        )
        print(
            f"[{kind}] greedy captions with/without KV cache on {dev} equal: "
            f"{caps.tokens.tolist() == ref_caps.tokens.tolist()}"
        )
        bf = from_parts(
            lm=folder,
            encoder=build_encoder(),
            projection=build_projection(),
            api="bridge",
            device=dev,
            dtype=torch.bfloat16,
        )
        a_bf = attribute(bf, bf.prepare_inputs(images, prompts=batch.prompts), [12, 13, 14])
        top32 = a_gpu.top_k(20)
        top_bf = a_bf.top_k(20)
        overlap = []
        for i in range(3):
            s1 = set(
                map(tuple, top32[top32.image == i][["layer", "unit", "position"]].values.tolist())
            )
            s2 = set(
                map(tuple, top_bf[top_bf.image == i][["layer", "unit", "position"]].values.tolist())
            )
            overlap.append(len(s1 & s2) / 20)
        print(
            f"[{kind}] bf16 vs fp32 attribution: top-20 overlap per image {overlap}; "
            f"scores dtype {a_bf.scores.dtype}"
        )


if __name__ == "__main__":
    main()
