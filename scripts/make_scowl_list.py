"""Make the SCOWL word list the interpretability filter ships (the paper's dictionary, S.2).

Schwettmann et al. (2023, supplement S.2) call a unit interpretable when at least 7 of its 10
decoded tokens are "words in the SCOWL English dictionary, for en-US or en-GB, with >= 3
letters". This script builds that list reproducibly from Debian's ``scowl`` package (the raw
SCOWL lists, version 2020.12.07 in Debian 12):

    apt-get install scowl
    python scripts/make_scowl_list.py            # size 60, the default spell-checker size

It takes the ``english``, ``american`` and ``british`` spelling categories, sub-categories
``words`` and ``upper`` (common capitalised words: "the English dictionary"; not the extra
proper names, abbreviations or contractions), every size up to ``--size``, keeps words of
ASCII letters only with at least 3 letters, lower-cases them and writes one per line, sorted,
gzipped, with SCOWL's copyright notice beside it. The same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

SIZES = (10, 20, 35, 40, 50, 55, 60, 70, 80, 95)
ASSETS = Path(__file__).resolve().parents[1] / "transformer_lens_mm" / "data" / "assets" / "scowl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scowl", default="/usr/share/dict/scowl", help="SCOWL final/ lists")
    parser.add_argument("--size", type=int, default=60, choices=SIZES)
    parser.add_argument("--out", default=str(ASSETS))
    args = parser.parse_args()
    src, out = Path(args.scowl), Path(args.out)
    if not src.is_dir():
        raise SystemExit(f"{src} not found: apt-get install scowl (Debian's raw SCOWL lists)")
    words: set[str] = set()
    used = []
    for category in ("english", "american", "british"):
        for sub in ("words", "upper"):
            for size in SIZES:
                if size > args.size:
                    continue
                path = src / f"{category}-{sub}.{size}"
                if not path.is_file():
                    continue
                used.append(path.name)
                for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
                    w = line.strip()
                    if len(w) >= 3 and w.isascii() and w.isalpha():
                        words.add(w.lower())
    out.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(sorted(words)) + "\n").encode()
    target = out / f"scowl-{args.size}-en-us-gb.txt.gz"
    with open(target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(data)
    (out / f"scowl-{args.size}-lists-used.txt").write_text("\n".join(sorted(used)) + "\n")
    copyright_file = Path("/usr/share/doc/scowl/copyright")
    if copyright_file.is_file():
        shutil.copyfile(copyright_file, out / "COPYRIGHT")
    print(f"{target}: {len(words)} words from {len(used)} SCOWL lists")


if __name__ == "__main__":
    main()
