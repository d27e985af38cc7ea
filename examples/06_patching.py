"""Step 6: activation patching from a clean image into a corrupted one (layer x position)."""

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm.tools.patching import logit_metric, patch_by_position, patch_by_unit
from transformer_lens_mm.tools.targets import token_id_of

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, _, _ = make_dataset(2, seed=1)
clean = model.prepare_inputs(images[:1], prompts=model.prompt + " a")
corrupted = model.prepare_inputs(images[1:2], prompts=model.prompt + " a")
metric = logit_metric(token_id_of(model.tokenizer, "red"))  # image 0 is red, image 1 green

res = patch_by_position(model, clean, corrupted, metric)
print(f"clean {res.clean:.2f}, corrupted {res.corrupted:.2f}")
print("restored fraction, layer x position (image positions 1-16):")
print(res.normalized[:, 1:17].numpy().round(2))
units = patch_by_unit(model, clean, corrupted, metric, layers=[0])
best = units.normalized[0].abs().argsort(descending=True)[:5]
print("layer-0 units whose clean activation restores most:", best.tolist())
