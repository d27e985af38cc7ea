"""python -m transformer_lens_mm: the tlmm command line."""

from transformer_lens_mm.pipelines.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
