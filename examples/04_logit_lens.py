"""Step 4: the logit lens at the position that predicts the caption's noun."""

from pathlib import Path

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm import generate_captions
from transformer_lens_mm.report.plotting import plot_logit_lens
from transformer_lens_mm.tools.lens import logit_lens
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, _, _ = make_dataset(2, seed=1)
caps = generate_captions(model, images, max_new_tokens=8)
targets = targets_from_captions(
    model.tokenizer, caps.tokens.tolist(), eos_token_id=model.tokenizer.eos_token_id
)
batch = target_inputs(model, model.prepare_inputs(images), targets)

table = logit_lens(model, batch, k=3, target_ids=[t.token_id for t in targets])
print(table[table["rank"] == 0][["component", "image", "token", "prob", "target_prob"]])
plot_logit_lens(
    logit_lens(model, batch, positions=list(range(17, batch.tokens.shape[1])), k=1)
).write_html(Path(args.out) / "logit_lens.html")
print(f"wrote {args.out}/logit_lens.html")
