"""Benchmark: a whole ``tlmm analyze`` run against the floor of the same work in plain Hugging Face.

The run: :func:`~transformer_lens_mm.pipelines.analyze.run_analysis` on generated scenes (batches
of 8; the ablation sweep at k = 0, 25, 100, 400, 1600, top and random units; captions
regenerated under ablation at k = 400; the soft prompts), as a user runs it. The floor: the same
work done with plain operations on the same weights and nothing else (the encoder once per
image, the projection, greedy captions of the same lengths with Hugging Face ``generate`` and
its KV cache, one forward + one backward per batch with logits at the predicting positions only,
the sweep's distinct conditions as stacked no-grad forwards unembedding only the last position,
two more greedy generations for the captions under ablation). Alternated in one process,
``--repeats`` times; min/median/max of run / floor, and where the run's time goes (exclusive
time per part, by wrapping the functions the pipeline calls).

    python benchmarks/analyze_floor.py --api hooked     # TL 3.9 HookedTransformer, demo model
    python benchmarks/analyze_floor.py --api bridge     # TransformerBridge (TL 4.3)
    python benchmarks/analyze_floor.py --model tiny     # a smoke test on a tiny random model
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attribution_and_sweep import scratch_dir

import transformer_lens_mm.pipelines.analyze.runner as runner
import transformer_lens_mm.pipelines.search as search
import transformer_lens_mm.pipelines.steps.ablation as ablation_steps
import transformer_lens_mm.pipelines.steps.soft_prompts as soft_prompt_steps
from transformer_lens_mm.core.encoders import ImageEncoder
from transformer_lens_mm.core.lm_loading import default_api
from transformer_lens_mm.data.datasets import SceneDataset
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.pipelines.analyze import AnalysisConfig, load_results, load_table
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions


class Profile:
    """Exclusive wall time of named functions (a nested wrapped call is not counted twice)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                inner = self._stack.pop()
                elapsed = time.perf_counter() - start
                self.totals[name] += elapsed - inner
                if self._stack:
                    self._stack[-1] += elapsed

        return timed

    @contextlib.contextmanager
    def patched(self, targets: list[tuple[object, str, str]]) -> Iterator[None]:
        saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
        for (owner, attr, name), (_, _, fn) in zip(targets, saved):
            setattr(owner, attr, self.wrap(name, fn))
        try:
            yield
        finally:
            for owner, attr, fn in saved:
                setattr(owner, attr, fn)


#: where the run's time goes: (owner, attribute, part)
RUN_PARTS = [
    (ImageEncoder, "forward", "encoder"),
    (search, "generate_captions", "captions"),
    (search, "attribute", "attribution (+ patch maps)"),
    (search, "decode_unit_table", "unit decoding"),
    (ablation_steps, "ablation_sweep", "ablation sweep"),
    (ablation_steps, "captions_under_ablation", "captions under ablation"),
    (soft_prompt_steps, "soft_prompt_step", "soft prompts"),
    (runner, "write_shard", "shard files"),
    (runner, "write_merged", "merged files"),
    (runner, "analysis_report", "report"),
]


def build(kind: str, api: str):
    """The model (ours), its Hugging Face twin on the same weights, the scene data and run."""
    from transformers import AutoModelForCausalLM

    if kind == "demo":
        from transformer_lens_mm.data.pretrained import load_demo_model, smollm2_folder

        model, folder = load_demo_model(api, scenes="shapes"), smollm2_folder()
        n, ks, captions_k, batch_size = 16, [0, 25, 100, 400, 1600], 400, 8
    else:
        from helpers import build_hf_lm, build_model

        folder = build_hf_lm(scratch_dir() / "tiny-gptj", "gptj")
        model = build_model(folder, api, prepend_bos=True)
        n, ks, captions_k, batch_size = 4, [0, 2, 8], 8, 2
    hf = AutoModelForCausalLM.from_pretrained(folder).eval().requires_grad_(False)
    data = SceneDataset(SceneSet(n, seed=2))
    config = dict(
        data={"kind": "scenes", "n": n, "seed": 2},
        k=100,
        batch_size=batch_size,
        shard_batches=2,
        ablation_ks=ks,
        ablation_captions_k=captions_k,
        soft_prompts=True,
    )
    return model, hf, data, config


def run_ours(model, data, config: dict, root: Path, profile: Profile) -> tuple[float, Path]:
    out = Path(tempfile.mkdtemp(dir=root))
    with profile.patched(RUN_PARTS):
        start = time.perf_counter()
        runner.run_analysis(
            AnalysisConfig(out=str(out), **config), model=model, data=data, verbose=False
        )
        elapsed = time.perf_counter() - start
    return elapsed, out


def _steps(tokenizer, texts, cap: int) -> int:
    """Greedy steps that produced ``texts`` (their tokens, + EOS where it stopped early)."""
    lengths = [len(tokenizer.encode(str(t), add_special_tokens=False)) + 1 for t in texts]
    return max(1, min(cap, max(lengths)))


def run_floor(model, hf, data, config: dict, out: Path, parts: dict[str, float]) -> float:
    """The same work in plain Hugging Face operations, driven by the run's own tables (which
    captions, how long, which targets), so the two do the same amount of work."""
    items, _, _ = load_results(out)
    captions = load_table(out, "ablation_captions")
    tok, enc, proj = model.tokenizer, model.image_encoder, model.image_projection
    bs, cap = config["batch_size"], 20
    n_ks = len(config["ablation_ks"])
    embed = hf.get_input_embeddings()

    def tick(name: str, start: float) -> float:
        now = time.perf_counter()
        parts[name] += now - start
        return now

    total = time.perf_counter()
    for b in range(0, len(data), bs):
        rows = items[(items["index"] >= b) & (items["index"] < b + bs)].sort_values("index")
        rows = rows[rows["failure"].isna()]  # the items the run attributed
        if not len(rows):
            continue
        t = time.perf_counter()
        pixels = torch.stack([enc.transform(data[i].image()) for i in rows["index"]])
        with torch.no_grad():
            feats = enc.model.forward_features(pixels)
            feats = feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats
            t = tick("encoder", t)
            soft = proj(feats)
        base = model.prepare_inputs(image_features=feats)  # the token layout (not timed work)

        def embeds_of(batch, soft=soft):
            e = embed(batch.tokens).clone()
            e[batch.image_mask] = soft[: len(batch)].reshape(-1, soft.shape[-1])
            return e

        t = time.perf_counter()
        with torch.no_grad():
            hf.generate(
                inputs_embeds=embeds_of(base),
                attention_mask=base.attention_mask,
                max_new_tokens=_steps(tok, rows["caption"], cap),
                min_new_tokens=_steps(tok, rows["caption"], cap),
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        t = tick("captions", t)
        ids = [tok.encode(" " + str(c).strip(), add_special_tokens=False) for c in rows["caption"]]
        targets = targets_from_captions(tok, ids)
        batch = target_inputs(model, base, targets)
        tids = torch.tensor([x.token_id for x in targets])
        t = time.perf_counter()
        e = embeds_of(batch).requires_grad_(True)
        last = batch.last_positions[:, None]
        logits = hf(inputs_embeds=e, attention_mask=batch.attention_mask, logits_to_keep=last)
        logits.logits[torch.arange(len(batch)), 0, tids].sum().backward()
        t = tick("attribution (+ patch maps)", t)
        # the sweep's distinct conditions: k = 0 once, then top and random for each other k
        conditions = [i for i in range(len(batch)) for _ in range(1 + 2 * (n_ks - 1))]
        with torch.no_grad():
            full = embeds_of(batch)
            for c in range(0, len(conditions), 32):
                sel = torch.tensor(conditions[c : c + 32])
                hf(
                    inputs_embeds=full[sel],
                    attention_mask=batch.attention_mask[sel],
                    logits_to_keep=batch.last_positions[sel][:, None],
                )
        t = tick("ablation sweep", t)
        batch_caps = captions[captions["index"].isin(rows["index"].tolist())]
        with torch.no_grad():
            for kind in ("top", "random"):
                steps_ = _steps(tok, batch_caps[batch_caps["kind"] == kind]["caption"], cap)
                hf.generate(
                    inputs_embeds=embeds_of(base),
                    attention_mask=base.attention_mask,
                    max_new_tokens=steps_,
                    min_new_tokens=steps_,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
        tick("captions under ablation", t)
    return time.perf_counter() - total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--model", choices=["demo", "tiny"], default="demo")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, hf, data, config = build(args.model, args.api)
    root = scratch_dir()
    # a warm-up of each (first calls build caches, load kernels, read the dictionary)
    run_ours(model, data, config, root, Profile())
    ratios, runs, floors = [], [], []
    profile, floor_parts = Profile(), defaultdict(float)
    for _ in range(args.repeats):
        t_run, out = run_ours(model, data, config, root, profile)
        t_floor = run_floor(model, hf, data, config, out, floor_parts)
        runs.append(t_run)
        floors.append(t_floor)
        ratios.append(t_run / t_floor)
    n = args.repeats
    print(
        f"{type(model).__name__}, {args.model} model, {len(data)} scenes, {args.repeats} "
        f"alternated repeats, {torch.get_num_threads()} threads"
    )
    print(
        f"run / floor: {statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max "
        f"{max(ratios):.2f}); run {statistics.median(runs):.2f} s, floor "
        f"{statistics.median(floors):.2f} s (medians)"
    )
    print("per part, mean seconds per run (run | floor):")
    names = list(dict.fromkeys([name for *_, name in RUN_PARTS] + list(floor_parts)))
    accounted = sum(profile.totals.values()) / n
    for name in names:
        ours = profile.totals.get(name, 0.0) / n
        theirs = floor_parts.get(name, 0.0) / n
        print(f"  {name:<28} {ours:7.2f} | {theirs:7.2f}")
    print(f"  {'other (loading, tables, ...)':<28} {statistics.mean(runs) - accounted:7.2f} |")


if __name__ == "__main__":
    main()
