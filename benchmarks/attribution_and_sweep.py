"""Benchmark: attribution and the stacked ablation sweep, as ratios against baselines.

Measured side by side in one process, repeated, reporting min/median/max:

* full attribution (all layers, all units, image positions) vs a plain forward of the same
  batch: time and peak memory (goal: <= 3.5x the time);
* the stacked top-vs-random ablation sweep (9 values of k) vs a Python loop of one forward per
  condition (goal: >= 5x faster).

The model is GPT-2-small-sized (12 layers, d_model 768, d_mlp 3072, 50257-token vocabulary),
built from a config with random weights: speed does not depend on the weights.

    python benchmarks/attribution_and_sweep.py                 # CPU
    python benchmarks/attribution_and_sweep.py --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import build_tokenizer

from transformer_lens_mm import ImageProjection, attribute, from_parts, hook_names
from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.tools.ablation import DEFAULT_KS, ablated, ablation_sweep
from transformer_lens_mm.tools.attribution import (
    frozen_parameters,
    last_position_metric,
    target_metric,
)
from transformer_lens_mm.tools.units import random_units_like


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or sampled RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self._rss()
            self.running = True
            self.max_rss = self.base

            def sample() -> None:
                while self.running:
                    self.max_rss = max(self.max_rss, self._rss())
                    time.sleep(0.002)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.max_rss, self._rss()) - self.base


def timed(fn, device: str) -> tuple[float, int]:
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return elapsed, mem.peak


def scratch_dir() -> Path:
    """A new temporary folder, removed when the process exits (a benchmark model is ~0.5 GB)."""
    folder = Path(tempfile.mkdtemp(prefix="tlmm-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def build(api: str, device: str, dtype: torch.dtype, n_image_tokens: int, size: str):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    folder = scratch_dir() / "bench-model"
    folder.mkdir()
    torch.manual_seed(0)
    if size == "tiny":  # only checks that the scripts run (tests/test_benchmarks.py)
        cfg = GPT2Config(n_embd=256, n_layer=8, n_head=4, vocab_size=64)  # 8192 MLP units
        GPT2LMHeadModel(cfg).save_pretrained(folder)
    elif size == "gpt2-small":
        cfg = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
        GPT2LMHeadModel(cfg).save_pretrained(folder)
    else:  # SmolLM2-135M-sized Llama
        cfg = LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        )
        LlamaForCausalLM(cfg).save_pretrained(folder)
    build_tokenizer(folder)
    d_model = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
    model = from_parts(
        lm=folder,
        encoder=None,
        projection=ImageProjection(1024, d_model),
        api=api,
        device=device,
        dtype=dtype,
    )
    return model, folder


def summary(name: str, values: list[float], goal: str) -> str:
    return (
        f"{name:<48} min {min(values):6.2f}  median {statistics.median(values):6.2f}  "
        f"max {max(values):6.2f}   goal {goal}"
    )


def plain_backward(model, batch, targets: list[int]) -> Callable[[], None]:
    """The memory baseline of attribution: a forward + backward of ``y_c`` that computes the
    gradient w.r.t. the embeddings and nothing else (no parameter gradients)."""
    tids = torch.tensor(targets)

    def leaf(x, hook):
        return x.detach().requires_grad_(True)

    def run() -> None:
        with torch.enable_grad(), frozen_parameters(model):
            y = last_position_metric(model, batch, tids, fwd_hooks=[(hook_names.EMBED, leaf)])
            y.sum().backward()

    return run


def track_rss() -> None:
    """Re-run this process with glibc returning freed large blocks, so RSS shows peaks."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:
        # glibc otherwise keeps freed large blocks in the heap and RSS stops reflecting peaks
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])


DTYPES = ["float32", "bfloat16", "float16"]


def profile(fn: Callable[[], None], device: str, rows: int = 15) -> str:
    """The operators one call of ``fn`` spends most time in (self time, device time on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main() -> None:
    track_rss()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--model", choices=["gpt2-small", "smollm2", "tiny"], default="gpt2-small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-tokens", type=int, default=196)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--skip-layer-loop", action="store_true", help="skip the slow baseline")
    parser.add_argument(
        "--profile", action="store_true", help="also print where one attribution spends its time"
    )
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model, _ = build(args.api, args.device, dtype, args.image_tokens, args.model)
    feats = torch.randn(args.batch, args.image_tokens, 1024)
    batch = model.prepare_inputs(image_features=feats)
    targets = [5] * args.batch
    print(
        f"{args.model} ({model.cfg.n_layers} layers, d_mlp {model.cfg.d_mlp}), api={args.api}, "
        f"device={args.device}, dtype={args.dtype}, batch {args.batch} x "
        f"{batch.tokens.shape[1]} tokens ({args.image_tokens} image tokens)"
    )

    def forward() -> None:
        with torch.no_grad():
            model(batch)

    def attribution() -> None:  # the full score tensor, copied to the host
        attribute(model, batch, targets, keep_activations=False)

    def attribution_top_k() -> None:  # as `tlmm analyze` runs it: top 100 + units for the sweep
        attribute(model, batch, targets, top_k=100, rank_units=max(DEFAULT_KS))

    forward_backward = plain_backward(model, batch, targets)

    def layer_by_layer() -> None:  # the naive way: one forward + backward per layer
        for layer in range(model.cfg.n_layers):
            attribute(model, batch, targets, layers=[layer], keep_activations=False)

    forward()
    forward_backward()
    attribution()  # warm-up
    attribution_top_k()
    t_ratio, t_ratio_k, m_ratio, t_fwd, m_fwd, m_att, m_fb = [], [], [], [], [], [], []
    for _ in range(args.repeats):
        tf, mf = timed(forward, args.device)
        _, mfb = timed(forward_backward, args.device)
        ta, ma = timed(attribution, args.device)
        tk, _ = timed(attribution_top_k, args.device)
        t_fwd.append(tf)
        m_fwd.append(mf)
        m_fb.append(mfb)
        m_att.append(ma)
        t_ratio.append(ta / tf)
        t_ratio_k.append(tk / tf)
        m_ratio.append(ma / max(mfb, 1))
    print(
        f"plain forward: median {statistics.median(t_fwd):.3f} s, peak +"
        f"{statistics.median(m_fwd) / 2**20:.0f} MiB; forward+backward peak +"
        f"{statistics.median(m_fb) / 2**20:.0f} MiB; attribution peak +"
        f"{statistics.median(m_att) / 2**20:.0f} MiB"
    )
    print(summary("attribution time / forward time", t_ratio, "<= 3.5"))
    print(summary("same, top 100 + 6400 ranked units kept", t_ratio_k, "<= 3.5"))
    print(summary("attribution peak memory / forward+backward peak", m_ratio, "<= 1.3"))
    if not args.skip_layer_loop:
        speedups = []
        for _ in range(max(1, args.repeats - 1)):
            ta, _ = timed(attribution, args.device)
            tl, _ = timed(layer_by_layer, args.device)
            speedups.append(tl / ta)
        print(summary("speed-up over one backward per layer", speedups, ">= 10"))
    if args.profile:
        print("one plain forward:\n" + profile(forward, args.device))
        print("one attribution:\n" + profile(attribution, args.device))

    # ablation sweep: one image, top and random units, 9 values of k
    one = batch.select([0])
    attr = attribute(model, one, targets[:1], keep_activations=False)
    ranked = attr.ranked_units(limit=max(DEFAULT_KS))
    conditions = []
    for k in DEFAULT_KS:
        top = ranked[0][:k]
        conditions += [top, random_units_like(model, top, seed=k)]

    def stacked() -> None:
        ablation_sweep(model, one, targets[:1], ranked, ks=DEFAULT_KS, chunk_size=len(conditions))

    def loop() -> None:
        for units in conditions:
            with torch.no_grad(), ablated(model, units):
                logits = model(one)
                target_metric(logits, one.last_positions, torch.tensor(targets[:1]))

    stacked_batch = one.select([0] * len(conditions))

    def stacked_forward() -> None:
        with torch.no_grad():
            model(stacked_batch)

    stacked()
    loop()
    stacked_forward()
    speedups, overheads = [], []
    for _ in range(args.repeats):
        ts, _ = timed(stacked, args.device)
        tl, _ = timed(loop, args.device)
        tf, _ = timed(stacked_forward, args.device)
        speedups.append(tl / ts)
        overheads.append(ts / tf)
    print(f"ablation conditions: {len(conditions)} (top + random for k in {list(DEFAULT_KS)})")
    print(summary("sweep time / one forward of the stacked batch", overheads, "<= 1.5"))
    print(summary("sweep speed-up over a loop of single forwards", speedups, ">= 5"))


if __name__ == "__main__":
    main()
