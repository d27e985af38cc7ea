"""transformer_lens_mm: image-conditioned language models as a TransformerLens plugin.

A frozen image encoder's patch features, mapped by one linear projection into a frozen LM's
embedding space, are injected as soft-prompt tokens through a hook on ``hook_embed`` (the LiMBeR
set-up studied in "Multimodal Neurons in Pretrained Text-Only Transformers").

Both TransformerLens worlds are supported: :class:`HookedMultimodalTransformer` (TL 3.x
``HookedTransformer``) and :class:`MultimodalTransformerBridge` (``TransformerBridge``, TL 3.9/4.x),
both satisfying the one model contract :class:`MultimodalModel`.

The folders, lowest layer first: ``fast`` (the speed layer: TL internals, version-gated),
``core`` (what gives a model sight), ``tools`` (one model + one batch -> tensor or table),
``report`` (HTML, cards, figures), ``data`` (data sets, scenes, real weights), ``pipelines``
(the search step, training, ``tlmm analyze``, ``tlmm demo``).

This module is the day-one face (``__all__``: under 30 names): the models and how to build
them, captioning, the paper's search and its main tools, training, and three modules
(``hook_names``, ``paper``, ``errors``). Everything else lives in its module
(``transformer_lens_mm.tools.spatial.patch_map``, ``transformer_lens_mm.core.encoders.
TimmEncoder``, ...); the names this face used to export still resolve here, with a
``DeprecationWarning`` naming their module.

Example:
    >>> import transformer_lens_mm as tlmm
    >>> tlmm.hook_names.mlp_post(3)
    'blocks.3.mlp.hook_post'
"""

import importlib
import warnings
from typing import Any

import transformer_lens_mm.core.hook_names as hook_names
import transformer_lens_mm.core.paper as paper
import transformer_lens_mm.errors as errors
from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.contract import MultimodalModel
from transformer_lens_mm.core.encoders import create_encoder, register_encoder
from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.core.hooked import HookedMultimodalTransformer
from transformer_lens_mm.core.loading import from_parts
from transformer_lens_mm.core.native import NativeVLMBridge
from transformer_lens_mm.core.projection import ImageProjection, load_projection
from transformer_lens_mm.errors import TLMMError
from transformer_lens_mm.fast.fusion import set_fused
from transformer_lens_mm.pipelines.search import find_multimodal_neurons
from transformer_lens_mm.pipelines.training import TrainingConfig, train_projection
from transformer_lens_mm.tools.ablation import ablated, ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.decoding import decode_units
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.spatial import spatial_selectivity

__version__ = "0.1.0"

__all__ = [
    "HookedMultimodalTransformer",
    "ImageProjection",
    "MultimodalModel",
    "MultimodalTransformerBridge",
    "NativeVLMBridge",
    "TLMMError",
    "TrainingConfig",
    "ablated",
    "ablation_sweep",
    "attribute",
    "captions_under_ablation",
    "create_encoder",
    "decode_units",
    "errors",
    "find_multimodal_neurons",
    "from_parts",
    "generate_captions",
    "hook_names",
    "load_demo_model",
    "load_projection",
    "logit_lens",
    "paper",
    "register_encoder",
    "set_fused",
    "spatial_selectivity",
    "train_projection",
]

#: names this face exported before it was cut to day-one size, and the module each lives in
_MOVED = {
    "RECIPES": "core.recipes",
    "Recipe": "core.recipes",
    "get_recipe": "core.recipes",
    "Attribution": "tools.attribution",
    "BatchSearch": "pipelines.search",
    "NeuronSearch": "pipelines.search",
    "SearchSettings": "pipelines.search",
    "search_batch": "pipelines.search",
    "CLIPResNetEncoder": "core.encoders",
    "ImageEncoder": "core.encoders",
    "TimmEncoder": "core.encoders",
    "TransformersEncoder": "core.encoders",
    "Captions": "core.generation",
    "LanguageModel": "core.contract",
    "MultimodalInput": "core.layout",
    "ProjectionConfig": "core.projection",
    "is_fused": "fast.fusion",
    "caption_loss": "pipelines.training",
    "ablation_curve": "tools.ablation",
    "ablation_hooks": "tools.ablation",
    "decode_soft_prompts": "tools.decoding",
    "decode_unit_table": "tools.decoding",
    "random_soft_prompts": "tools.decoding",
    "soft_prompt_table": "tools.decoding",
    "logit_metric": "tools.patching",
    "patch_by_position": "tools.patching",
    "patch_by_unit": "tools.patching",
    "patch_map": "tools.spatial",
    "first_noun": "tools.targets",
    "target_inputs": "tools.targets",
    "targets_from_captions": "tools.targets",
    "per_row_masks": "tools.units",
    "random_units_like": "tools.units",
    "units_of": "tools.units",
    "is_interpretable": "tools.words",
    **{name: "errors" for name in errors.__all__ if name != "TLMMError"},
}


def __getattr__(name: str) -> Any:
    if name == "load_demo_model":  # imported on first use: it reaches the data layer
        from transformer_lens_mm.data.pretrained import load_demo_model

        return load_demo_model
    if name in _MOVED:
        module = f"transformer_lens_mm.{_MOVED[name]}"
        warnings.warn(
            f"transformer_lens_mm.{name} is no longer part of the package's face: import it "
            f"from {module} (an error class is also transformer_lens_mm.errors.{name})",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'transformer_lens_mm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
