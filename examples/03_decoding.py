"""Step 3: decode units through the unembedding, and soft prompts against random vectors."""

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm import hook_names
from transformer_lens_mm.tools.decoding import (
    decode_soft_prompts,
    decode_units,
    random_soft_prompts,
)
from transformer_lens_mm.tools.words import is_interpretable

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, _, _ = make_dataset(4, seed=1)

# The toy LM is a Llama: its gated MLP gives a unit no sign of its own, so a decoding is of the
# direction the unit writes at an entry, sign(Z) * W_out[k] (docs/readout.md). A search takes
# the sign of Z at each entry; here both directions of two units are read explicitly.
for layer, unit in [(0, 3), (1, 7)]:
    for sign, tokens in zip((1, -1), decode_units(model, [(layer, unit)] * 2, signs=[1, -1])):
        words = [t for t, _ in tokens]
        print(f"L{layer}.u{unit} ({sign:+d}): {words} interpretable={is_interpretable(words)}")

_, cache = model.run_with_cache(images=images)
soft = cache[hook_names.IMAGE_EMBED]
real = decode_soft_prompts(model, soft, k=5)
rand = decode_soft_prompts(model, random_soft_prompts(soft, n=1000, seed=0), k=5)
print(
    f"mean top-1 cosine: soft prompts {real[real['rank'] == 0].cosine.mean():.3f}, "
    f"random vectors of the same norms {rand[rand['rank'] == 0].cosine.mean():.3f}"
)
print("image 0, patch 0 decodes to:", real[real["index"] == 0].token.tolist())
