"""python -m transformer_lens_mm: the tlmm command line."""

from transformer_lens_mm.cli import main

raise SystemExit(main())
