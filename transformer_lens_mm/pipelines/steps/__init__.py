"""The steps after the search, written once and used by ``tlmm analyze`` and ``tlmm demo``.

Each step module holds the step's functions (one searched batch in, a table in the search's
schema out: ``item``, ``index``, ``target`` in front) and registers the step
(:mod:`~transformer_lens_mm.pipelines.steps.registry`): ``ablation``, ``ablation_captions``,
``cross_concept``, ``unit_effects`` (:mod:`.ablation`), ``soft_prompts``, ``direct_scores``,
``knockout``, ``logit_lens``, ``contextual_lens`` (:mod:`.lenses`), ``spatial``,
``category_selectivity`` (:mod:`.spatial`), ``controls``, ``target_ranks`` (:mod:`.controls`),
``text_scores`` (:mod:`.text_scores`).
A new step: one module here calling ``register_step``, and one import line below.

Example:
    >>> from transformer_lens_mm.pipelines.steps import STEPS
    >>> "ablation" in STEPS and "spatial" in STEPS
    True
"""

# the registry: one line per step module (importing it registers its steps)
from transformer_lens_mm.pipelines.steps import ablation as ablation
from transformer_lens_mm.pipelines.steps import controls as controls
from transformer_lens_mm.pipelines.steps import direct as direct
from transformer_lens_mm.pipelines.steps import knockout as knockout
from transformer_lens_mm.pipelines.steps import lenses as lenses
from transformer_lens_mm.pipelines.steps import soft_prompts as soft_prompts
from transformer_lens_mm.pipelines.steps import spatial as spatial
from transformer_lens_mm.pipelines.steps import text_scores as text_scores
from transformer_lens_mm.pipelines.steps.ablation import (
    ablation_captions_step,
    ablation_step,
    cross_concept_step,
    unit_effect_step,
)
from transformer_lens_mm.pipelines.steps.direct import direct_score_step
from transformer_lens_mm.pipelines.steps.knockout import knockout_step
from transformer_lens_mm.pipelines.steps.lenses import contextual_lens_step, logit_lens_step
from transformer_lens_mm.pipelines.steps.registry import (
    STEPS,
    Step,
    StepContext,
    active_steps,
    register_step,
    step_plan,
)
from transformer_lens_mm.pipelines.steps.soft_prompts import soft_prompt_step

__all__ = [
    "STEPS",
    "Step",
    "StepContext",
    "ablation_captions_step",
    "ablation_step",
    "active_steps",
    "contextual_lens_step",
    "cross_concept_step",
    "direct_score_step",
    "knockout_step",
    "logit_lens_step",
    "register_step",
    "soft_prompt_step",
    "step_plan",
    "unit_effect_step",
]
