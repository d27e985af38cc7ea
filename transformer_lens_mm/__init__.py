"""transformer_lens_mm: image-conditioned language models as a TransformerLens plugin.

A frozen image encoder's patch features, mapped by one linear projection into a frozen LM's
embedding space, are injected as soft-prompt tokens through a hook on ``hook_embed`` (the LiMBeR
set-up studied in "Multimodal Neurons in Pretrained Text-Only Transformers").

Both TransformerLens worlds are supported: :class:`HookedMultimodalTransformer` (TL 3.x
``HookedTransformer``) and :class:`MultimodalTransformerBridge` (``TransformerBridge``, TL 3.9/4.x).
"""

from transformer_lens_mm import hook_names
from transformer_lens_mm.bridge import MultimodalTransformerBridge
from transformer_lens_mm.captioning import Captions, generate_captions
from transformer_lens_mm.encoders import ImageEncoder
from transformer_lens_mm.hooked import HookedMultimodalTransformer
from transformer_lens_mm.layout import MultimodalInput
from transformer_lens_mm.loading import from_parts
from transformer_lens_mm.projection import (
    ImageProjection,
    ProjectionConfig,
    ProjectionShapeError,
    load_projection,
)
from transformer_lens_mm.training import TrainingConfig, caption_loss, train_projection

__version__ = "0.1.0"

__all__ = [
    "Captions",
    "HookedMultimodalTransformer",
    "ImageEncoder",
    "ImageProjection",
    "MultimodalInput",
    "MultimodalTransformerBridge",
    "ProjectionConfig",
    "ProjectionShapeError",
    "TrainingConfig",
    "caption_loss",
    "from_parts",
    "generate_captions",
    "hook_names",
    "load_projection",
    "train_projection",
]
