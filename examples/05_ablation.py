"""Step 5: ablate each image's top-k units vs random units of the same layers; recaption."""

from pathlib import Path

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm.pipelines.search import find_multimodal_neurons
from transformer_lens_mm.report.plotting import plot_ablation_curves
from transformer_lens_mm.tools.ablation import ablation_sweep, captions_under_ablation
from transformer_lens_mm.tools.units import units_of

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, _, _ = make_dataset(8, seed=1)

found = find_multimodal_neurons(model, images, k=256, batch_size=8, verbose=False)
ids = sorted(found.targets)
ranked = [units_of(found.units, i) for i in ids]  # each image's units, best first
batch = found.inputs[0]
ks = [k for k in (0, 8, 16, 32, 64) if k <= min(len(r) for r in ranked)]
sweep = ablation_sweep(
    model, batch, [found.targets[i].token_id for i in ids], ranked, ks=ks, n_random=3, seed=0
)
print(sweep.groupby(["kind", "k"])["rel_p"].mean().unstack(0).round(3))
plot_ablation_curves(sweep).write_html(Path(args.out) / "ablation.html")

caps = captions_under_ablation(
    model, [images[i] for i in ids[:2]], ranked[0][:32], max_new_tokens=6
)
print("captions with image 0's top-32 units ablated:", caps.texts)
print(f"wrote {args.out}/ablation.html")
