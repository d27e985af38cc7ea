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
(the search step, training, ``tlmm analyze``, ``tlmm demo``). Everything below is importable
from here.

Example:
    >>> import transformer_lens_mm as tlmm
    >>> tlmm.hook_names.mlp_post(3)
    'blocks.3.mlp.hook_post'
"""

import transformer_lens_mm.core.hook_names as hook_names
import transformer_lens_mm.core.paper as paper
from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.contract import LanguageModel, MultimodalModel
from transformer_lens_mm.core.encoders import (
    CLIPResNetEncoder,
    ImageEncoder,
    TimmEncoder,
    TransformersEncoder,
    create_encoder,
    register_encoder,
)
from transformer_lens_mm.core.errors import (
    ConfigError,
    CorpusError,
    CorruptWeightsError,
    DiskFullError,
    EncoderError,
    HookShapeError,
    InputShapeError,
    LayerRangeError,
    MetricModelError,
    MissingPackageError,
    MissingWeightsError,
    OutputExistsError,
    PositionGroupError,
    ProjectionShapeError,
    ReadoutError,
    StoreError,
    TLMMError,
    UnitIndexError,
    UnsupportedModelError,
)
from transformer_lens_mm.core.generation import Captions, generate_captions
from transformer_lens_mm.core.hooked import HookedMultimodalTransformer
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.loading import from_parts
from transformer_lens_mm.core.native import NativeVLMBridge
from transformer_lens_mm.core.projection import ImageProjection, ProjectionConfig, load_projection
from transformer_lens_mm.core.recipes import RECIPES, Recipe, get_recipe
from transformer_lens_mm.fast.fusion import is_fused, set_fused
from transformer_lens_mm.pipelines.search import (
    BatchSearch,
    NeuronSearch,
    SearchSettings,
    find_multimodal_neurons,
    search_batch,
)
from transformer_lens_mm.pipelines.training import TrainingConfig, caption_loss, train_projection
from transformer_lens_mm.tools.ablation import (
    ablated,
    ablation_curve,
    ablation_hooks,
    ablation_sweep,
    captions_under_ablation,
)
from transformer_lens_mm.tools.attribution import Attribution, attribute
from transformer_lens_mm.tools.decoding import (
    decode_soft_prompts,
    decode_unit_table,
    decode_units,
    random_soft_prompts,
    soft_prompt_table,
)
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.patching import logit_metric, patch_by_position, patch_by_unit
from transformer_lens_mm.tools.spatial import patch_map, spatial_selectivity
from transformer_lens_mm.tools.targets import first_noun, target_inputs, targets_from_captions
from transformer_lens_mm.tools.units import per_row_masks, random_units_like, units_of
from transformer_lens_mm.tools.words import is_interpretable

__version__ = "0.1.0"

__all__ = [
    "RECIPES",
    "Attribution",
    "BatchSearch",
    "CLIPResNetEncoder",
    "Captions",
    "ConfigError",
    "CorpusError",
    "CorruptWeightsError",
    "DiskFullError",
    "EncoderError",
    "HookShapeError",
    "HookedMultimodalTransformer",
    "ImageEncoder",
    "ImageProjection",
    "InputShapeError",
    "LanguageModel",
    "LayerRangeError",
    "MetricModelError",
    "MissingPackageError",
    "MissingWeightsError",
    "MultimodalInput",
    "MultimodalModel",
    "MultimodalTransformerBridge",
    "NativeVLMBridge",
    "NeuronSearch",
    "OutputExistsError",
    "PositionGroupError",
    "ProjectionConfig",
    "ProjectionShapeError",
    "ReadoutError",
    "Recipe",
    "SearchSettings",
    "StoreError",
    "TLMMError",
    "TimmEncoder",
    "TrainingConfig",
    "TransformersEncoder",
    "UnitIndexError",
    "UnsupportedModelError",
    "ablated",
    "ablation_curve",
    "ablation_hooks",
    "ablation_sweep",
    "attribute",
    "caption_loss",
    "captions_under_ablation",
    "create_encoder",
    "decode_soft_prompts",
    "decode_unit_table",
    "decode_units",
    "find_multimodal_neurons",
    "first_noun",
    "from_parts",
    "generate_captions",
    "get_recipe",
    "hook_names",
    "is_fused",
    "is_interpretable",
    "load_projection",
    "logit_lens",
    "logit_metric",
    "paper",
    "patch_by_position",
    "patch_by_unit",
    "patch_map",
    "per_row_masks",
    "random_soft_prompts",
    "random_units_like",
    "register_encoder",
    "search_batch",
    "set_fused",
    "soft_prompt_table",
    "spatial_selectivity",
    "target_inputs",
    "targets_from_captions",
    "train_projection",
    "units_of",
]
