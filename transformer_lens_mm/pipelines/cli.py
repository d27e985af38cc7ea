"""The ``tlmm`` command line.

tlmm demo --out runs/demo                 # the paper's analysis + controls, ~7 min on CPU
tlmm demo --out runs/demo                 # again on the same folder: resumes an unfinished run
tlmm demo --out runs/demo --lm gemma3     # on Gemma 3 270M instead of SmolLM2-135M
tlmm demo --out runs/demo --quick         # a few scenes, for a smoke test
tlmm power --out runs/power               # planted multimodal neurons: the tests' power
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from transformer_lens_mm.errors import TLMMError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from transformer_lens_mm.pipelines.demo import QUICK, DemoConfig, run_demo

    kwargs = dict(QUICK) if args.quick else {}
    if args.scenes is not None:
        kwargs["n_scenes"] = args.scenes
    if args.no_photos:
        kwargs["photos"] = False
    if args.lm is not None:
        kwargs["lm"] = args.lm
    if args.scene_set is not None:
        kwargs["scene_set"] = args.scene_set
    run_demo(args.out, DemoConfig(api=args.api, **kwargs), overwrite=args.overwrite)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    import dataclasses

    from transformer_lens_mm.pipelines.analyze import load_config, plan_run, run_analysis

    config = load_config(args.config)
    if args.out:
        config = dataclasses.replace(config, out=args.out)
    if args.dry_run:
        print("\n".join(plan_run(config)))
        print("config OK (dry run: nothing loaded, nothing written)")
        return 0
    run_analysis(config, strict=args.strict)
    return 0


def _power(args: argparse.Namespace) -> int:
    from transformer_lens_mm.data.pretrained import load_demo_model
    from transformer_lens_mm.pipelines.demo.config import prepare_output
    from transformer_lens_mm.pipelines.power import QUICK_POWER, PowerConfig, power_check

    out = prepare_output(args.out, args.overwrite)
    config = PowerConfig(**(QUICK_POWER if args.quick else {}))
    model = load_demo_model(args.api, lm=args.lm, scenes="natural")
    result = power_check(model, config)
    result.write(out)
    print(result.recovery.round(3).to_string(index=False))
    print(f"tables and summary.json: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tlmm`` console script."""
    parser = argparse.ArgumentParser(prog="tlmm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the multimodal-neuron analysis on a real LM + EfficientNet-Lite0",
        description="Caption held-out scenes and photos, attribute, decode, lens, spatial "
        "selectivity and ablation; writes report.html, summary.json and CSV tables to --out.",
    )
    demo.add_argument(
        "--out", required=True, help="output folder: a new one, or a demo run to resume"
    )
    demo.add_argument(
        "--overwrite", action="store_true", help="start again in an existing --out folder"
    )
    demo.add_argument("--api", choices=["hooked", "bridge"], default=None)
    demo.add_argument("--scenes", type=int, default=None, help="held-out scenes (default 40)")
    demo.add_argument(
        "--lm", choices=["gemma3", "smollm2"], default=None, help="the LM (default smollm2)"
    )
    demo.add_argument(
        "--scene-set",
        choices=["natural", "shapes"],
        default=None,
        help="natural-object scenes (default) or the shape scenes (SmolLM2 only)",
    )
    demo.add_argument("--no-photos", action="store_true", help="skip scikit-image's photos")
    demo.add_argument("--quick", action="store_true", help="8 scenes, short sweeps (smoke test)")
    demo.set_defaults(run=_demo)
    analyze = sub.add_parser(
        "analyze",
        help="caption, attribute and decode every image of a data set (resumable, sharded)",
        description="Run or resume a dataset-scale analysis from a TOML/YAML config; under "
        "torchrun --nproc_per_node N the images are shared across processes.",
    )
    analyze.add_argument("config", help="TOML or YAML config (see docs/analyze.md)")
    analyze.add_argument("--out", default=None, help="override the config's output folder")
    analyze.add_argument(
        "--dry-run",
        action="store_true",
        help="check the config and print the plan (the steps, their tables and LM passes per "
        "image); load no weights, read no data",
    )
    analyze.add_argument(
        "--strict",
        action="store_true",
        help="refuse a step the data cannot feed (no masks, no categories) instead of "
        "skipping it with the reason in the summary",
    )
    analyze.set_defaults(run=_analyze)
    power = sub.add_parser(
        "power",
        help="plant known multimodal neurons and measure how often the tests find them",
        description="Plant units that read a concept in the image tokens and write c into the "
        "demo LM, run the unchanged pipeline with and without them on held-out scenes, and "
        "write each test's recovery rate (and its rate on the unplanted slots) to --out.",
    )
    power.add_argument("--out", required=True, help="output folder (must not exist)")
    power.add_argument("--overwrite", action="store_true", help="reuse an existing --out folder")
    power.add_argument("--lm", choices=["gemma3", "smollm2"], default="smollm2")
    power.add_argument("--api", choices=["hooked", "bridge"], default=None)
    power.add_argument("--quick", action="store_true", help="2 concepts, few scenes (smoke test)")
    power.set_defaults(run=_power)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except (TLMMError, FileNotFoundError) as err:  # the message names the problem and the fix
        print(f"tlmm {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
