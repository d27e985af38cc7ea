"""The paper's constants (Schwettmann et al. 2023) are pinned: their values, the defaults that
use them, and the behaviour each controls, so none can drift without a test failing."""

import inspect

import pytest
import torch

from transformer_lens_mm import paper
from transformer_lens_mm.core.projection import ProjectionConfig
from transformer_lens_mm.pipelines.analyze.config import AnalysisConfig
from transformer_lens_mm.pipelines.search import SearchSettings, find_multimodal_neurons
from transformer_lens_mm.report.cards import unit_map_png
from transformer_lens_mm.report.plotting import plot_unit_map
from transformer_lens_mm.tools.ablation import DEFAULT_KS
from transformer_lens_mm.tools.attribution import Attribution
from transformer_lens_mm.tools.decoding import (
    decode_soft_prompts,
    decode_units,
    random_soft_prompts,
    soft_prompt_table,
)
from transformer_lens_mm.tools.spatial import quantile_mask, spatial_selectivity
from transformer_lens_mm.tools.words import is_dictionary_word, is_interpretable


def test_the_values_are_the_papers():
    assert paper.PROMPT == "A picture of"
    assert paper.TOP_K == 100
    assert paper.DECODED_TOKENS == 10
    assert (paper.MIN_WORDS, paper.MIN_WORD_LETTERS) == (7, 3)
    assert paper.SOFT_PROMPT_TOKENS == 5 and paper.RANDOM_SOFT_PROMPTS == 1000
    assert paper.REGION_QUANTILE == 0.95
    assert paper.ABLATION_KS == (0, 50, 100, 200, 400, 800, 1600, 3200, 6400) == DEFAULT_KS


def default(fn, name):
    return inspect.signature(fn).parameters[name].default


def test_every_default_that_is_a_paper_choice_uses_the_constant():
    assert default(decode_units, "k") == paper.DECODED_TOKENS
    assert default(Attribution.top_k, "k") == paper.TOP_K
    assert default(find_multimodal_neurons, "k") == paper.TOP_K
    assert default(find_multimodal_neurons, "n_tokens") == paper.DECODED_TOKENS
    assert default(find_multimodal_neurons, "min_words") == paper.MIN_WORDS
    assert SearchSettings().k == paper.TOP_K and SearchSettings().min_words == paper.MIN_WORDS
    assert AnalysisConfig(out="x").k == paper.TOP_K
    assert AnalysisConfig(out="x").soft_prompt_tokens == paper.SOFT_PROMPT_TOKENS
    for fn in (decode_soft_prompts, soft_prompt_table):
        assert default(fn, "k") == paper.SOFT_PROMPT_TOKENS
    assert default(random_soft_prompts, "n") == paper.RANDOM_SOFT_PROMPTS
    for fn, name in (
        (quantile_mask, "q"),
        (spatial_selectivity, "q"),
        (unit_map_png, "quantile"),
        (plot_unit_map, "quantile"),
    ):
        assert default(fn, name) == paper.REGION_QUANTILE, fn.__name__
    assert ProjectionConfig(d_image=2, d_model=2).prompt == paper.PROMPT


def test_interpretable_means_at_least_seven_of_ten_dictionary_words_of_three_letters():
    words = [" water", " fish", " boat", " lake", " river", " horse", " cloud"]
    junk = ["qzx", " xq", "..."]
    assert is_interpretable(words + junk)  # exactly 7: kept (>= 7, not > 7)
    assert not is_interpretable(words[:6] + junk + ["zzq"])  # 6: dropped
    assert is_dictionary_word(" cat") and not is_dictionary_word(" ox")  # 3 letters, not 2


def test_the_region_is_the_top_five_percent_of_the_map():
    values = torch.arange(20.0).reshape(4, 5)  # 20 distinct values: the 0.95 quantile is 18.05
    region = quantile_mask(values)
    assert int(region.sum()) == 1 and bool(region[-1, -1])  # 0.9 would keep 2
    big = torch.arange(400.0).reshape(20, 20)
    assert int(quantile_mask(big).sum()) == 20  # 5% of 400


def test_random_soft_prompts_default_to_a_thousand_vectors():
    assert random_soft_prompts(torch.ones(3, 4)).shape == (1000, 4)


@pytest.mark.parametrize("k", [1, 3])
def test_top_k_default_is_a_hundred_rows_per_image(k):
    scores = torch.rand(k, 2, 10, 20)
    attr = Attribution(
        layers=[0, 1],
        positions=torch.arange(10).expand(k, 10),
        target_ids=torch.zeros(k, dtype=torch.long),
        target_values=torch.zeros(k),
        metric="logit",
        scores=scores,
    )
    assert len(attr.top_k()) == 100 * k
