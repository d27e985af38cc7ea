"""The steps after the search against the same edits made by hand: a plain forward hook that
zeroes the unit at the image positions, and p(c) read at the last position."""

import pytest
import torch
from helpers import APIS, build_model, random_images

from transformer_lens_mm import hook_names
from transformer_lens_mm.pipelines.search import SearchSettings, search_batch
from transformer_lens_mm.pipelines.steps import cross_concept_step, unit_effect_step


@pytest.fixture(scope="module", params=APIS)
def searched(request, lm_dirs):
    model = build_model(lm_dirs["gptj"], request.param)
    found = search_batch(
        model,
        indices=[0, 1, 2],
        ids=["a", "b", "c"],
        images=random_images(3, seed=7),
        targets=["dog", "cat", "dog"],
        settings=SearchSettings(k=8, rank_units=20),
    )
    return model, found


def p_c_by_hand(model, found, row, units):
    """p(c) of batch row ``row`` with ``units`` zeroed at its image positions (plain hooks)."""
    batch = found.inputs.select([row])
    image = batch.image_mask

    def zero(unit):
        def hook(act, hook):
            act = act.clone()
            act[:, :, unit] = torch.where(image, 0.0, act[:, :, unit])
            return act

        return hook

    hooks = [(hook_names.mlp_post(layer), zero(unit)) for layer, unit in units]
    with torch.no_grad():
        logits = model.run_with_hooks(batch, fwd_hooks=hooks)
    last = logits[0, int(batch.last_positions[0])]
    return float(last.softmax(-1)[found.targets[row].token_id])


def test_unit_effect_step_equals_zeroing_the_unit_by_hand(searched):
    model, found = searched
    units = {"a": [(0, 3), (1, 5)], "c": [(1, 2)], "elsewhere": [(0, 1)]}
    table = unit_effect_step(model, found, units, seed=0)
    top = table[table["kind"] == "top"]
    assert top[["item", "layer", "unit"]].values.tolist() == [
        ["a", 0, 3],
        ["a", 1, 5],
        ["c", 1, 2],
    ]
    for r in top.itertuples():
        row = ["a", "b", "c"].index(r.item)
        base = p_c_by_hand(model, found, row, [])
        assert r.p_c == pytest.approx(p_c_by_hand(model, found, row, [(r.layer, r.unit)]), rel=1e-4)
        assert r.rel_p == pytest.approx(r.p_c / base, rel=1e-5)
    rnd = table[table["kind"] == "random"]
    assert len(rnd) == 3 and rnd["rel_p"].notna().all()
    assert unit_effect_step(model, found, {"nobody": [(0, 1)]}).empty


def test_cross_concept_step_zeroes_the_source_units_on_the_other_images(searched):
    model, found = searched
    table = cross_concept_step(model, found, ks=[4], seed=0)
    assert set(table["k"]) == {0, 4}  # the k = 0 reference is always run
    top = table[(table["kind"] == "top") & (table["k"] == 4)]
    # dog images (a, c) are evaluated on the cat image (b) and themselves; b on a and c
    pairs = set(map(tuple, top[["source_item", "item"]].values.tolist()))
    assert pairs == {("a", "a"), ("a", "b"), ("b", "b"), ("b", "a"), ("b", "c"), ("c", "c"),
                     ("c", "b")}  # fmt: skip
    ranked = found.attribution.ranked_units("max", limit=4)
    for r in top.itertuples():
        src, row = ["a", "b", "c"].index(r.source_item), ["a", "b", "c"].index(r.item)
        assert r.same == (src == row)
        by_hand = p_c_by_hand(model, found, row, ranked[src][:4])
        assert r.p_c == pytest.approx(by_hand, rel=1e-4)
        assert r.source_target == found.rows[src][2] and r.target == found.rows[row][2]


def test_ablation_steps_share_forwards_and_give_the_same_tables(searched):
    """The sweep, cross-concept ablation and unit effects of one batch share their forwards
    (``found.ablations``): the tables equal those of each step run alone, with fewer rows run."""
    from dataclasses import replace

    from transformer_lens_mm.pipelines.steps import ablation_step

    model, found = searched
    units = {"a": [(0, 3), (1, 5)], "b": [(1, 2)]}

    def run_all(shared: bool):
        rows_run = []
        logits_at = model.logits_at

        def counting(batch, rows, positions):
            rows_run.append(len(rows))
            return logits_at(batch, rows, positions)

        fresh = lambda: replace(found, ablations={})  # noqa: E731
        one = fresh()
        model.logits_at = counting
        try:
            tables = [
                ablation_step(model, one if shared else fresh(), ks=[0, 2, 4], seed=3),
                cross_concept_step(model, one if shared else fresh(), ks=[2, 4], seed=3),
                unit_effect_step(model, one if shared else fresh(), units, seed=3),
            ]
        finally:
            del model.logits_at
        return tables, sum(rows_run)

    alone, n_alone = run_all(shared=False)
    shared, n_shared = run_all(shared=True)
    for a, b in zip(alone, shared):
        values = ["p_c", "rel_p", "logit_c", "delta_p", "delta_logit"]
        assert a.drop(columns=values, errors="ignore").equals(
            b.drop(columns=values, errors="ignore")
        )
        for column in ("p_c", "rel_p"):
            assert b[column].to_numpy() == pytest.approx(a[column].to_numpy(), rel=1e-5, abs=1e-9)
    # run alone: sweep 3 refs + 2 ks x 2 kinds x 3 images = 15; cross: 7 pairs x (1 ref + 2 ks
    # x 2 kinds) = 35 minus the refs of repeated images (7 - 3) = 31; unit effects: 3 pairs x
    # 2 + 2 refs = 8. Shared: the cross step reuses the 3 refs and the 3 images' own top-k at
    # k = 2, 4 (6), unit effects the 2 refs (random draws that happen to coincide with one
    # already run on the same image are shared too)
    assert n_alone == 15 + 31 + 8
    assert n_shared <= n_alone - 3 - 6 - 2


def test_a_step_has_batch_or_revisit_work_not_both():
    from transformer_lens_mm.errors import ConfigError
    from transformer_lens_mm.pipelines.steps import STEPS, Step, register_step

    work = lambda *args: {}  # noqa: E731
    with pytest.raises(ConfigError, match="batch or revisit work, not both"):
        register_step(Step("both", "x", on=lambda c: False, batch=work, revisit=work))
    assert "both" not in STEPS
    assert STEPS["card_effects"].revisit is not None and STEPS["card_effects"].batch is None
