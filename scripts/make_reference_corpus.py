"""Make the general-English reference corpus the contextual lens ships (no extra install).

LatentLens (Krojer et al., ICML 2026; ``pip install latentlens``, MIT licence) ships
``latentlens/data/concepts.txt``: 117,125 sentences, a few per English concept word, written to
give each word its ordinary contexts. This script samples ``--n`` of them with a fixed seed and
writes them gzipped, one per line, with the licence beside them:

    pip install latentlens==0.1.0
    python scripts/make_reference_corpus.py          # 3,000 sentences

The same package version and arguments give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "transformer_lens_mm" / "data" / "assets" / "corpora"
HEADER = """The sentences in general-en.txt.gz are a seeded sample (--n {n}, --seed {seed}) of
concepts.txt from the latentlens package (https://github.com/McGill-NLP/latentlens), version
{version}, whose licence follows.

"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ASSETS)
    args = parser.parse_args()
    import latentlens

    source = Path(latentlens.__file__).parent / "data" / "concepts.txt"
    lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    sample = random.Random(args.seed).sample(lines, args.n)
    args.out.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(sample) + "\n").encode("utf-8")
    with open(args.out / "general-en.txt.gz", "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
            f.write(data)
    from importlib.metadata import files

    licence = next(f for f in files("latentlens") if f.name.upper().startswith("LICEN"))
    header = HEADER.format(n=args.n, seed=args.seed, version=latentlens.__version__)
    (args.out / "LICENCE").write_text(header + licence.read_text(encoding="utf-8"))
    print(f"{args.n} of {len(lines)} sentences -> {args.out / 'general-en.txt.gz'}")


if __name__ == "__main__":
    main()
