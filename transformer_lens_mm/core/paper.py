"""The method's constants, as Schwettmann et al. (2023) chose them, in one place.

"Multimodal Neurons in Pretrained Text-Only Transformers" (arXiv 2308.01544). Every default
of the package that is a choice of the paper comes from here, and ``tests`` pin each value
(and the behaviour it controls), so none of them can drift silently.

Example:
    >>> TOP_K, DECODED_TOKENS, MIN_WORDS, REGION_QUANTILE
    (100, 10, 7, 0.95)
"""

from __future__ import annotations

__all__ = [
    "ABLATION_KS",
    "CATEGORY_UNITS",
    "DECODED_TOKENS",
    "MIN_WORDS",
    "MIN_WORD_LETTERS",
    "PAPER_RESULTS",
    "PROMPT",
    "RANDOM_SOFT_PROMPTS",
    "REGION_QUANTILE",
    "SOFT_PROMPT_TOKENS",
    "TOP_K",
]

#: Text after the image tokens (LiMBeR's prompt, sec. 2).
PROMPT = "A picture of"
#: ``(layer, unit, position)`` entries kept per image, by ``Z * dy_c/dZ`` (sec. 2.1).
TOP_K = 100
#: Tokens of a unit's decoding ``softmax(W_U W_out[k])`` (sec. 2.1).
DECODED_TOKENS = 10
#: Interpretability filter: at least this many of the decoded tokens are dictionary words ...
MIN_WORDS = 7
#: ... of at least this many letters (sec. 2.1).
MIN_WORD_LETTERS = 3
#: Nearest vocabulary tokens (cosine with ``W_E``) per soft-prompt vector (sec. 3.1).
SOFT_PROMPT_TOKENS = 5
#: Random vectors decoded as the soft-prompt baseline (sec. 3.1).
RANDOM_SOFT_PROMPTS = 1000
#: Quantile of a unit's upsampled patch map that marks its region (spatial selectivity).
REGION_QUANTILE = 0.95
#: Numbers of units zeroed in the ablation experiment, 0 being the unablated reference.
ABLATION_KS = (0, 50, 100, 200, 400, 800, 1600, 3200, 6400)
#: Units per class in the category-selectivity test: the interpretable units that appear in the
#: most images of the class (supplement S.4).
CATEGORY_UNITS = 20

#: The paper's reported results a run can be set beside: ``key -> (what, value, where)``, the
#: value as printed (GPT-J-6B + LiMBeR-BEiT on COCO val2017; arXiv 2308.01544v2).
PAPER_RESULTS: dict[str, tuple[str, str, str]] = {
    "interpretable_share": (
        "share of top units that pass the interpretability filter",
        "50%",
        "sec. 2.2",
    ),
    "top_layers": ("where most top units are", "layers 5-10 of 28", "sec. 2.2"),
    "bertscore_units": ("BERTScore, best unit decoding vs captions", ".3848", "Table 1"),
    "bertscore_units_random": ("BERTScore, randomly re-paired", ".3627", "Table 1"),
    "clipscore_units": ("CLIPScore, best unit decoding vs image", "23.43", "Table 1"),
    "clipscore_units_random": ("CLIPScore, randomly re-paired", "21.74", "Table 1"),
    "clipscore_prompts": ("CLIPScore, soft prompts' nearest tokens", "19.17", "Table 2"),
    "clipscore_prompts_random": ("CLIPScore, random vectors' nearest tokens", "19.22", "Table 2"),
    "bertscore_prompts": ("BERTScore, soft prompts' nearest tokens", ".3291", "Table 2"),
    "bertscore_prompts_random": ("BERTScore, random vectors' nearest tokens", ".3286", "Table 2"),
    "prompts_ks": ("KS test, soft prompts vs random (CLIPScore)", "D = .037, p > .5", "sec. 3.1"),
    "iou_top_beats_random": (
        "categories where top units segment c's object better than random units",
        "12 of 12",
        "Figure 5, sec. 3.2",
    ),
    "ablation_top": (
        "p(c) lost with the top-k units zeroed (largest k)",
        "80% on average (k = 6400)",
        "sec. 3.3",
    ),
    "ablation_random": (
        "p(c) lost with k random same-layer units zeroed (largest k)",
        "largely unaffected (k = 6400)",
        "sec. 3.3",
    ),
}
