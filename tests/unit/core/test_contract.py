"""The model contract: both classes satisfy it, and the tools need nothing else of a model.

A wrapper that exposes *only* the contract's members (any other attribute raises) runs
captioning, the search step, attribution, the ablation sweep, the logit lens and the patch maps
with the same results as the model itself.
"""

import re
from pathlib import Path

import pytest
import torch
from helpers import APIS, build_model, random_images

import transformer_lens_mm
from transformer_lens_mm import MultimodalModel
from transformer_lens_mm.core.contract import LanguageModel
from transformer_lens_mm.core.generation import generate_captions
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import ablation_step
from transformer_lens_mm.tools.attribution import attribute
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.spatial import image_mlp_activations

PACKAGE = Path(transformer_lens_mm.__file__).parent


def contract_members(protocol: type) -> set[str]:
    names: set[str] = set()
    for cls in protocol.__mro__:
        if cls in (object,) or cls.__module__ == "typing":
            continue
        names |= set(getattr(cls, "__annotations__", {}))
        names |= {n for n in vars(cls) if not n.startswith("_")}
    return names


class ContractOnly:
    """A model seen through the contract only: every other attribute is an error."""

    def __init__(self, model):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_allowed", contract_members(MultimodalModel))

    def __getattr__(self, name):
        if name not in self._allowed:
            raise AttributeError(f"{name!r} is not part of the model contract")
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        if name not in self._allowed:
            raise AttributeError(f"{name!r} is not part of the model contract")
        setattr(self._model, name, value)


@pytest.fixture(scope="module", params=APIS)
def model(request, lm_dirs):
    return build_model(lm_dirs["gptj"], request.param)


def test_both_classes_satisfy_the_contract_and_plain_tl_models_the_lm_part(model):
    assert isinstance(model, MultimodalModel) and isinstance(model, LanguageModel)
    assert {"prepare_inputs", "kv_first_step", "logits_at", "lm_device"} <= contract_members(
        MultimodalModel
    )
    assert not isinstance(torch.nn.Linear(2, 2), LanguageModel)


def test_the_tools_run_on_the_contract_alone(model):
    seen = ContractOnly(model)
    images = random_images(2, seed=3)
    caps = generate_captions(seen, images, max_new_tokens=4, stop_at_eos=False)
    assert (
        caps.tokens.tolist()
        == generate_captions(model, images, max_new_tokens=4, stop_at_eos=False).tokens.tolist()
    )
    settings = SearchSettings(k=5, rank_units=8, max_new_tokens=4)
    a = search_batch(seen, indices=[0, 1], images=images, targets=[12, 13], settings=settings)
    b = search_batch(model, indices=[0, 1], images=images, targets=[12, 13], settings=settings)
    assert a.units.drop(columns=["score", "activation"]).equals(
        b.units.drop(columns=["score", "activation"])
    )
    torch.testing.assert_close(a.maps, b.maps)
    sweep = ablation_step(seen, a, ks=[0, 4], seed=1)
    assert sweep["p_c"].tolist() == pytest.approx(
        ablation_step(model, b, ks=[0, 4], seed=1)["p_c"].tolist(), rel=1e-5
    )
    batch = model.prepare_inputs(images)
    torch.testing.assert_close(
        attribute(seen, batch, [12, 13]).scores, attribute(model, batch, [12, 13]).scores
    )
    assert logit_lens(seen, batch, k=2).equals(logit_lens(model, batch, k=2))
    torch.testing.assert_close(
        image_mlp_activations(seen, batch), image_mlp_activations(model, batch)
    )


def test_no_tool_or_pipeline_calls_a_private_model_method():
    pattern = re.compile(r"\bmodel\._[a-z]")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{n}"
        for folder in ("tools", "pipelines", "report")
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
