"""The HTML report is self-contained; unit cards are picked and drawn from a units table."""

import pandas as pd
import plotly.graph_objects as go
import torch

from transformer_lens_mm.report.cards import UnitCard, unit_cards, unit_map_png
from transformer_lens_mm.report.html import Report, Tile


def test_report_is_self_contained(tmp_path):
    png = unit_map_png(torch.rand(3, 40, 40), torch.arange(16.0), (4, 4), size=64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = Report("T <script>")
    report.section("Figures", "two figures share one copy of plotly.js")
    report.figure(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    report.figure(go.Figure(go.Bar(x=[1, 2], y=[4, 3])))
    report.table(pd.DataFrame({"k": range(80), "p": 0.5}), max_rows=10)
    report.cards([UnitCard(3, 7, [" dog", " cat"], [(png, "scene")], {"images": "2"}, [" dog"])])
    page = report.write(tmp_path / "r.html").read_text()
    assert page.count("plotly.js v") == 1  # the library is embedded once, not fetched
    assert "<script src=" not in page  # nothing fetched from a CDN
    assert "T &lt;script&gt;" in page  # titles are escaped
    assert "data:image/png;base64," in page and 'class="tok hit"' in page
    assert "70 more rows" in page


def test_headline_tiles_and_folded_tables(tmp_path):
    report = Report("T")
    report.tiles(
        [
            Tile("Scenes with a unit that writes c", "40%", "random 2%", "what it means", True),
            Tile("Ratio", "1.0x", "random 1.0x", met=False),
            Tile("Plain", "3"),
        ]
    )
    report.table(pd.DataFrame({"k": range(30)}), max_rows=5, collapsed="Long table")
    page = report.write(tmp_path / "r.html").read_text()
    assert page.count('<div class="tile ') + page.count('<div class="tile"') == 3
    assert 'class="tile met"' in page and 'class="tile unmet"' in page
    assert "target met" in page and "target not met" in page
    assert "<details><summary>Long table (30 rows)</summary>" in page and "25 more rows" in page


def _units() -> pd.DataFrame:
    """Unit (0, 1) is in the top-k of 3 items, (1, 2) of 2 but decodes to both targets."""
    rows = [
        ("a", 0, 1, 0.9, False),
        ("b", 0, 1, 0.8, False),
        ("c", 0, 1, 0.7, False),
        ("a", 1, 2, 0.1, True),
        ("b", 1, 2, 0.2, True),
        ("c", 1, 3, 5.0, False),
    ]
    table = pd.DataFrame(rows, columns=["item", "layer", "unit", "score", "decodes_to_target"])
    table["target"] = table["item"].map({"a": " dog", "b": " cat", "c": " dog"})
    table["tokens"] = [[" dog", " cat"]] * len(table)
    table["interpretable"] = True
    return table


def test_unit_cards_rank_by_target_hits_then_images_then_score():
    cards = unit_cards(_units(), n_cards=3)
    assert [(c.layer, c.unit) for c in cards] == [(1, 2), (0, 1), (1, 3)]
    assert cards[0].facts["decodes to the target in"] == "2 images"
    assert cards[1].facts["top-k of"] == "3 images"
    assert cards[1].facts["concepts"] == "dog (2), cat (1)"
    assert cards[0].maps == []  # no maps given
    assert cards[0].badge == ""  # no generic column: no verdict
    flagged = _units().assign(generic=lambda t: (t.layer == 0) & (t.unit == 1))
    extra = unit_cards(flagged, n_cards=2, facts_of=lambda la, u: {"effect": f"{la}.{u}"})
    assert [c.badge for c in extra] == ["not generic", "generic"]
    assert extra[1].facts["effect"] == "0.1" and 'class="badge generic"' in extra[1].to_html()
    without = unit_cards(_units().drop(columns=["decodes_to_target"]), n_cards=1)
    assert (without[0].layer, without[0].unit) == (0, 1)  # most images first


def test_unit_cards_draw_each_items_own_map():
    units = _units()
    maps = torch.arange(len(units) * 4, dtype=torch.float32).reshape(len(units), 4)
    images = {"a": torch.rand(3, 8, 8), "b": torch.rand(3, 8, 8), "c": torch.rand(3, 8, 8)}
    cards = unit_cards(units, maps, image_of=images.get, n_cards=2, n_images=2)
    card = cards[1]  # (0, 1): best items a (row 0) then b (row 1)
    want = [unit_map_png(images[i], maps[r], (2, 2)) for i, r in (("a", 0), ("b", 1))]
    assert [png for png, _ in card.maps] == want
    assert [text for _, text in card.maps] == ["a:  dog", "b:  cat"]
    assert unit_cards(units.iloc[:0], maps[:0]) == []


def test_card_tokens_are_visible_whatever_bytes_they_hold():
    """A byte-level token (the replacement character), control characters, spaces at the ends
    and the empty string each render as something a reader can see."""
    from transformer_lens_mm.report.cards import UnitCard

    card = UnitCard(layer=3, unit=7, tokens=[" dog", "\ufffd", "\r\n", "", " "])
    page = card.to_html()
    for shown in ("\u2423dog", "&lt;byte&gt;", "\\r\\n", "\u2205", ">\u2423<"):
        assert shown in page, shown
    assert "\ufffd" not in page and "\r" not in page
    assert 'title="a byte of a character split over several tokens"' in page


def test_tables_leave_out_columns_with_no_value_and_count_rows_honestly():
    import pandas as pd

    from transformer_lens_mm.report.html import Report

    report = Report("t")
    df = pd.DataFrame({"item": range(60), "failure": [None] * 60, "x": [0.5] * 60})
    report.table(df, max_rows=50)
    page = report.to_html()
    assert "<th>failure</th>" not in page and "<th>x</th>" in page
    assert "10 more rows not shown here" in page and "left out: failure" in page
    assert "in the CSV file" not in page  # a report table is often a subset of its CSV
