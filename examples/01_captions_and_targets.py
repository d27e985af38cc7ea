"""Step 1: caption images greedily and take each caption's first noun as the target c."""

from _common import parse_args
from toy_model import load_toy_model, make_dataset

from transformer_lens_mm import generate_captions
from transformer_lens_mm.tools.targets import target_inputs, targets_from_captions

args = parse_args(__doc__)
model = load_toy_model(args.api, cache=args.toy)
images, truths, _ = make_dataset(4, seed=1)

caps = generate_captions(model, images, max_new_tokens=8)
targets = targets_from_captions(
    model.tokenizer, caps.tokens.tolist(), eos_token_id=model.tokenizer.eos_token_id
)
for text, truth, t in zip(caps.texts, truths, targets):
    print(
        f"caption {text!r:22} (truth {truth!r:18}) -> target "
        f"{None if t is None else (t.word, t.token, t.prefix_ids)}"
    )

# y_c is read where the model predicted c: the prompt + the caption tokens before c
usable = [i for i, t in enumerate(targets) if t is not None]
batch = target_inputs(
    model, model.prepare_inputs([images[i] for i in usable]), [targets[i] for i in usable]
)
print("prompts with prefixes:", batch.prompts)
