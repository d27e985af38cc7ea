"""A gated MLP's unit has no sign: every readout the package reports must not depend on it.

Negating row ``k`` of the up projection and column ``k`` of the down projection (``W_in[:, k]``
and ``W_out[k]`` in TransformerLens's names) of a gated MLP (``Z = act(gate) * up``) leaves the
model's outputs exactly unchanged. These tests flip half of the units of every layer of a tiny
Llama and a tiny Gemma 3 (built from configs, weights saved as Hugging Face folders) and check
that every statistic the package reports for those units is unchanged: scores, decoded tokens,
``c``'s rank in the decodings, the interpretability filter, patch maps, IoU, category
selectivity, ablation effects, the direct score and the report's unit rows and cards. Only the
raw activation ``Z`` and the ``sign`` column (the weights' orientation of the unit) flip.

On the sign-blind readout (``+W_out[k]`` decoded, raw ``Z`` maps and peaks) the decodings, maps,
IoU and selectivity of the flipped units change: the first test fails on that code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import APIS, build_encoder, build_hf_lm, build_projection, load_hf, random_images

from transformer_lens_mm import from_parts
from transformer_lens_mm.data.datasets import SceneDataset
from transformer_lens_mm.data.scenes import SceneSet
from transformer_lens_mm.pipelines.experiments import (
    category_selectivity,
    decoding_target_ranks,
    spatial_iou_by_category,
)
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.report.cards import unit_cards
from transformer_lens_mm.tools.ablation import ablation_sweep
from transformer_lens_mm.tools.direct import direct_effect

TARGETS = ["dog", "cat", "circle", "star"]


def flip_units(folder: Path, out: Path, *, seed: int = 0) -> tuple[Path, dict[int, list[int]]]:
    """Save ``folder``'s model with a random half of each layer's MLP units sign-flipped."""
    model = load_hf(folder)
    gen = torch.Generator().manual_seed(seed)
    flipped = {}
    with torch.no_grad():
        for layer, block in enumerate(model.model.layers):
            d_mlp = block.mlp.up_proj.weight.shape[0]
            units = torch.randperm(d_mlp, generator=gen)[: d_mlp // 2].sort().values
            block.mlp.up_proj.weight[units] *= -1
            block.mlp.down_proj.weight[:, units] *= -1
            flipped[layer] = units.tolist()
    model.save_pretrained(out)
    for f in folder.iterdir():
        if "token" in f.name or f.name == "special_tokens_map.json":
            (out / f.name).write_bytes(f.read_bytes())
    return out, flipped


@pytest.fixture(scope="module")
def gated_pairs(tmp_path_factory) -> dict[str, tuple[Path, Path, dict[int, list[int]]]]:
    root = tmp_path_factory.mktemp("gated")
    out = {}
    for kind in ("llama", "gemma3"):
        folder = build_hf_lm(root / f"tiny-{kind}", kind)
        flipped, units = flip_units(folder, root / f"tiny-{kind}-flipped")
        out[kind] = (folder, flipped, units)
    return out


def _model(folder: Path, api: str):
    enc = build_encoder()
    return from_parts(lm=folder, encoder=enc, projection=build_projection(enc.d_image), api=api)


def _cases():
    # TL 3.9 builds Gemma 3 only at the real 270M shape (tests/integration: the slow tier)
    return [
        (kind, api)
        for kind in ("llama", "gemma3")
        for api in APIS
        if (kind, api) != ("gemma3", "hooked")
    ]


def _report(model, data: SceneDataset) -> dict[str, object]:
    """Everything the package reports about a batch's top units, by the public functions."""
    images = [data[i].image() for i in range(len(data))]
    ids = [data[i].id for i in range(len(data))]
    found = search_batch(
        model,
        indices=range(len(images)),
        ids=ids,
        images=images,
        targets=TARGETS[: len(images)],
        settings=SearchSettings(k=24, rank_units=60),
    )
    units = found.units
    items = found.items.assign(noun=[data[i].categories[0] for i in range(len(data))])
    targets = {row[0]: t.token_id for row, t in zip(found.rows, found.targets)}
    out: dict[str, object] = {"units": units, "maps": found.maps}
    out["ranks"] = decoding_target_ranks(model, units, targets, seed=3)
    out["iou"] = spatial_iou_by_category(model, data, items, units, q=0.8, n_random=2)
    # every unit counts here (the tiny model's decodings are not words)
    out["selectivity"] = category_selectivity(
        model, units.assign(interpretable=True), items, list(data), n_units=4
    )
    out["sweep"] = ablation_sweep(
        model,
        found.inputs,
        [t.token_id for t in found.targets],
        found.attribution.ranked_units("max"),
        ks=(0, 5, 20),
        n_random=2,
    )
    out["direct"] = direct_effect(
        model, found.inputs, [t.token_id for t in found.targets], top_k=24
    ).top_k(24)
    cards = unit_cards(
        units,
        found.maps,
        image_of=lambda item: images[ids.index(item)],
        grid_size=(4, 4),
        n_cards=6,
    )
    out["cards"] = [card.to_html() for card in cards]
    out["logits"] = model(found.inputs)
    return out


def _same(a: pd.DataFrame, b: pd.DataFrame, skip: tuple[str, ...] = ()) -> None:
    cols = [c for c in a.columns if c not in skip]
    assert list(b.columns) == list(a.columns)
    for col in cols:
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(b[col].to_numpy(), a[col].to_numpy(), rtol=1e-4, atol=1e-5)
        else:
            assert b[col].tolist() == a[col].tolist(), col


@pytest.mark.parametrize(("kind", "api"), _cases())
def test_flipping_a_gated_units_sign_changes_nothing_reported(gated_pairs, kind, api):
    folder, flipped_folder, flipped = gated_pairs[kind]
    data = SceneDataset(SceneSet(4, seed=4, size=40))
    a = _report(_model(folder, api), data)
    b = _report(_model(flipped_folder, api), data)
    torch.testing.assert_close(b["logits"], a["logits"], rtol=1e-4, atol=1e-4)

    ua, ub = a["units"], b["units"]
    is_flipped = [u in flipped[la] for la, u in zip(ua["layer"], ua["unit"])]
    assert any(is_flipped) and not all(is_flipped)  # the test reaches flipped and kept units
    # the same entries, scores, decodings, filter and hits; only Z and its sign flip
    _same(ua, ub, skip=("activation", "sign"))
    torch.testing.assert_close(b["maps"], a["maps"], rtol=1e-4, atol=1e-5)
    factor = np.where(is_flipped, -1, 1)
    np.testing.assert_allclose(ub["activation"], factor * ua["activation"], rtol=1e-4, atol=1e-5)
    assert (ua["sign"] == -1).any() and (ua["sign"] == 1).any()  # both signs are read
    assert ub["sign"].tolist() == (factor * ua["sign"]).tolist()

    ra, rb = a["ranks"], b["ranks"]  # c's rank in each top (and random) unit's decoding
    _same(
        ra.sort_values(["item", "kind", "layer", "unit", "target_rank"], kind="stable"),
        rb.sort_values(["item", "kind", "layer", "unit", "target_rank"], kind="stable"),
        skip=("sign",),
    )
    _same(a["iou"], b["iou"], skip=("sign",))  # patch regions and IoU, top and random units
    sa, sb = a["selectivity"], b["selectivity"]
    key = ["unit_class", "layer", "unit", "image_class"]
    _same(sa.sort_values(key), sb.sort_values(key), skip=("sign",))
    _same(a["sweep"], b["sweep"])  # zero-ablation of top-k and random units
    _same(a["direct"], b["direct"], skip=("activation",))
    assert b["cards"] == a["cards"]


def test_gelu_models_keep_the_papers_readout(lm_dirs):
    """GPT-J's MLP is not gated: its units read +W_out (no sign from Z, no final norm), as in
    the paper, even for entries whose activation is negative."""
    from transformer_lens_mm.tools.decoding import decode_units, unit_token_ranks
    from transformer_lens_mm.tools.readout import Readout, readout_for

    model = _model(lm_dirs["gptj"], "bridge")
    assert readout_for(model) == Readout(signed=False, final_norm=False)
    units = [(0, 3), (1, 7), (1, 60)]
    w_u = model.W_U.detach().float()
    by_hand = [
        (model.blocks[la].mlp.W_out.detach().float()[u] @ w_u).softmax(-1) for la, u in units
    ]
    for signs in (None, [-1.0, 2.0, -0.1]):
        got = decode_units(model, units, signs=signs, k=5)
        for row, probs in zip(got, by_hand):
            keep = probs.clone()
            keep[[0, 1, 2]] = -1  # special tokens are never decoded
            assert [t.strip() for t, _ in row] == [
                model.tokenizer.decode([i]).strip() for i in keep.topk(5).indices.tolist()
            ]
    ranks = unit_token_ranks(model, units, [25, 25, 25], signs=[-1.0, -1.0, -1.0])
    assert ranks.tolist() == unit_token_ranks(model, units, [25, 25, 25]).tolist()
    found = search_batch(
        model, indices=[0, 1], images=random_images(2), targets=["dog", "cat"],
        settings=SearchSettings(k=40),
    )  # fmt: skip
    assert (found.units["activation"] < 0).any() and (found.units["sign"] == 1).all()
