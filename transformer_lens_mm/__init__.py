"""transformer_lens_mm: image-conditioned language models as a TransformerLens plugin.

A frozen image encoder's patch features, mapped by one linear projection into a frozen LM's
embedding space, are injected as soft-prompt tokens through a hook on ``hook_embed`` (the LiMBeR
set-up studied in "Multimodal Neurons in Pretrained Text-Only Transformers").

Both TransformerLens worlds are supported: :class:`HookedMultimodalTransformer` (TL 3.x
``HookedTransformer``) and :class:`MultimodalTransformerBridge` (``TransformerBridge``, TL 3.9/4.x).

Modules: ``injection``/``hooked``/``bridge`` (the models), ``encoders``, ``projection``,
``layout``, ``captioning``, ``training``, ``targets``, ``attribution``, ``decoding``,
``word_filter``, ``lens``, ``ablation``, ``patching``, ``neurons``, ``spatial``, ``plotting``;
data-set scale: ``datasets``, ``analyze`` (``tlmm analyze``), ``experiments``, ``metrics``
(BERTScore/CLIPScore, extra ``[metrics]``), ``feature_cache``, ``report``, ``demo``.
"""

import transformer_lens_mm.core.hook_names as hook_names
from transformer_lens_mm.core.bridge import MultimodalTransformerBridge
from transformer_lens_mm.core.encoders import ImageEncoder
from transformer_lens_mm.core.generation import Captions, generate_captions
from transformer_lens_mm.core.hooked import HookedMultimodalTransformer
from transformer_lens_mm.core.layout import MultimodalInput
from transformer_lens_mm.core.loading import from_parts
from transformer_lens_mm.core.projection import (
    ImageProjection,
    ProjectionConfig,
    ProjectionShapeError,
    load_projection,
)
from transformer_lens_mm.pipelines.search import NeuronSearch, find_multimodal_neurons
from transformer_lens_mm.pipelines.training import TrainingConfig, caption_loss, train_projection
from transformer_lens_mm.tools.ablation import (
    ablated,
    ablation_hooks,
    ablation_sweep,
    captions_under_ablation,
)
from transformer_lens_mm.tools.attribution import Attribution, attribute
from transformer_lens_mm.tools.decoding import (
    decode_soft_prompts,
    decode_units,
    random_soft_prompts,
    soft_prompt_table,
)
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.patching import logit_metric, patch_by_position, patch_by_unit
from transformer_lens_mm.tools.targets import first_noun, target_inputs, targets_from_captions
from transformer_lens_mm.tools.words import is_interpretable

__version__ = "0.1.0"

__all__ = [
    "Attribution",
    "Captions",
    "HookedMultimodalTransformer",
    "ImageEncoder",
    "ImageProjection",
    "MultimodalInput",
    "MultimodalTransformerBridge",
    "NeuronSearch",
    "ProjectionConfig",
    "ProjectionShapeError",
    "TrainingConfig",
    "ablated",
    "ablation_hooks",
    "ablation_sweep",
    "attribute",
    "caption_loss",
    "captions_under_ablation",
    "decode_soft_prompts",
    "decode_units",
    "find_multimodal_neurons",
    "first_noun",
    "from_parts",
    "generate_captions",
    "hook_names",
    "is_interpretable",
    "load_projection",
    "logit_lens",
    "logit_metric",
    "patch_by_position",
    "patch_by_unit",
    "random_soft_prompts",
    "soft_prompt_table",
    "target_inputs",
    "targets_from_captions",
    "train_projection",
]
