"""``tlmm demo``: the paper's analysis end to end on real pretrained weights.

* :mod:`~transformer_lens_mm.pipelines.demo.config`: :class:`DemoConfig`, the output folder;
* :mod:`~transformer_lens_mm.pipelines.demo.runner`: :func:`run_demo`;
* :mod:`~transformer_lens_mm.pipelines.demo.summary`: ``summary.json`` and its printed form;
* :mod:`~transformer_lens_mm.pipelines.demo.report`: ``report.html``.
"""

from transformer_lens_mm.pipelines.demo.config import QUICK, DemoConfig, prepare_output
from transformer_lens_mm.pipelines.demo.runner import run_demo
from transformer_lens_mm.pipelines.demo.summary import summary_text

__all__ = ["QUICK", "DemoConfig", "prepare_output", "run_demo", "summary_text"]
