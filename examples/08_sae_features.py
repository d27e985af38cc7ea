"""Step 8: SAE features at image positions with SAELens (TransformerLens 3.x, where SAELens runs).

SAELens's ``HookedSAETransformer`` is given sight (``from_parts`` converts it in place; with
``--api bridge``, SAELens's ``SAETransformerBridge`` methods are given to a built
``MultimodalTransformerBridge``: ``MultimodalSAETransformerBridge.from_multimodal``), a small
SAE is fitted to the residual stream at the image positions of the toy model, attached with
SAELens's own ``run_with_cache_with_saes``, and each image's most active features are listed
with the patches where they fire. ``exclude_special_tokens=True`` keeps the SAE at the image
positions (their placeholder token id is not a real special token).
"""

from pathlib import Path

import torch
from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm import from_parts
from transformer_lens_mm.core.lm_loading import load_hooked_transformer
from transformer_lens_mm.fast.versions import require_hooked_transformer
from transformer_lens_mm.tools.sae import image_sae_features

require_hooked_transformer("SAELens")
import sae_lens  # noqa: E402 (after the check: SAELens fails to import on TL 4.x)

from transformer_lens_mm.core.sae import MultimodalSAETransformerBridge  # noqa: E402

args = parse_args(__doc__)
toy = load_toy_model("hooked", cache=args.toy)  # trains the toy model on first use
if args.api == "hooked":  # SAELens's HookedSAETransformer, given sight by from_parts
    lm = load_hooked_transformer(Path(args.toy) / "tiny-lm", cls=sae_lens.HookedSAETransformer)
    model = from_parts(lm=lm, encoder=toy.image_encoder, projection=toy.image_projection)
else:  # a built MultimodalTransformerBridge gets SAELens's bridge methods in place
    model = MultimodalSAETransformerBridge.from_multimodal(
        from_parts(
            lm=Path(args.toy) / "tiny-lm",
            encoder=toy.image_encoder,
            projection=toy.image_projection,
            api="bridge",
        )
    )
images, captions, _ = make_dataset(32, seed=3)
hook = "blocks.0.hook_resid_post"

# the residual stream at the image positions, to fit the SAE to
batch = model.prepare_inputs(images)
_, cache = model.run_with_cache(batch, names_filter=[hook])
acts = cache[hook][:, batch.image_positions[0]].reshape(-1, model.cfg.d_model)

cfg = sae_lens.StandardSAEConfig(d_in=int(model.cfg.d_model), d_sae=64)
cfg.metadata.hook_name = hook
sae = sae_lens.StandardSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
torch.manual_seed(0)
for _ in range(300):  # reconstruction + L1: a few seconds on a CPU
    feats = sae.encode(acts)
    loss = (sae.decode(feats) - acts).pow(2).mean() + 1e-3 * feats.abs().sum(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"SAE on {hook}: {tuple(acts.shape)} image-position activations, loss {loss.item():.4f}")

with torch.no_grad():
    features = image_sae_features(model, batch, sae, exclude_special_tokens=True)  # [n, 16, 64]
grid = model.image_encoder.grid_size
for i in range(4):
    strength = features[i].sum(0)
    top = strength.topk(3).indices.tolist()
    where = {f: features[i, :, f].argmax().item() for f in top}
    patches = ", ".join(f"f{f} at {divmod(p, grid[1])}" for f, p in where.items())
    print(f"image {i} ({captions[i].strip()}): strongest features {top}; peaks: {patches}")
torch.save(features, Path(args.out) / "sae_features.pt")
print(f"wrote {args.out}/sae_features.pt")
