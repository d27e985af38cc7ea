"""``tlmm analyze``: the paper's analysis over a data set, sharded, resumable, torchrun-ready.

* :mod:`~transformer_lens_mm.pipelines.analyze.config`: :class:`AnalysisConfig`, TOML/YAML,
  data sets and models from config tables;
* :mod:`~transformer_lens_mm.pipelines.analyze.store`: the on-disk run format (shards, merge,
  :func:`load_results`, :func:`load_table`);
* :mod:`~transformer_lens_mm.pipelines.analyze.runner`: :func:`run_analysis`;
* :mod:`~transformer_lens_mm.pipelines.analyze.report`: :func:`analysis_report`.
"""

from transformer_lens_mm.pipelines.analyze.config import (
    AnalysisConfig,
    load_config,
    load_dataset,
    load_model,
    plan_run,
)
from transformer_lens_mm.pipelines.analyze.report import analysis_report
from transformer_lens_mm.pipelines.analyze.runner import run_analysis
from transformer_lens_mm.pipelines.analyze.store import load_results, load_table

__all__ = [
    "AnalysisConfig",
    "analysis_report",
    "load_config",
    "load_dataset",
    "load_model",
    "load_results",
    "load_table",
    "plan_run",
    "run_analysis",
]
