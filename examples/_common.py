"""Argument parsing shared by the example scripts."""

from __future__ import annotations

import argparse
from pathlib import Path

from transformer_lens_mm.core.lm_loading import default_api


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--api", choices=["hooked", "bridge"], default=default_api())
    parser.add_argument("--toy", default="runs/toy", help="cache folder of the toy model")
    parser.add_argument("--out", default="runs/examples", help="folder for figures and tables")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return args
