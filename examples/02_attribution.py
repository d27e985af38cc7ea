"""Step 2: score every MLP unit at every image position by Z * dy_c/dZ; keep the top 100."""

from pathlib import Path

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm.pipelines.search import find_multimodal_neurons
from transformer_lens_mm.report.plotting import plot_top_units_per_layer

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, _, _ = make_dataset(8, seed=1)

found = find_multimodal_neurons(model, images, k=100, batch_size=4)
print(found.summary())
table = found.units.assign(tokens=[t[:5] for t in found.units.tokens])
print(table.head(8)[["item", "target", "layer", "unit", "position", "score", "tokens"]].to_string())
found.units.to_csv(Path(args.out) / "top_units.csv", index=False)
plot_top_units_per_layer(found.units, n_layers=model.cfg.n_layers).write_html(
    Path(args.out) / "top_units_per_layer.html"
)
print(f"wrote {args.out}/top_units.csv and top_units_per_layer.html")
