#!/usr/bin/env python3
"""Reference logits and greedy tokens from Hugging Face transformers for shardlm's test models.

Run on a machine with torch + transformers (the project's GPU machine), on models made by
`shardlm make-model` with the settings recorded in the output, e.g.:

  python3 tests/reference/model_reference.py --model /tmp/m/llama-tiny-f32 \
      --make-model "--arch llama --preset tiny --dtype f32 --seed 1" \
      --prompts tests/data/reference/prompts.json --out tests/data/reference/llama-tiny-f32.json

For every prompt it records: the prompt's token ids (HF tokenizer), the logits of the last prompt
position at a fixed sample of vocabulary indices (every STRIDE-th id) plus the top 16, and 32
greedy tokens (argmax each step, no stop at end-of-sequence). Computation runs on the CPU in float32
(no TF32), so the figures are exact f32 references; with --native-dtype the model runs in the dtype
its weights are stored in (bf16 math, as a transformers user would run it).
"""
import argparse
import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

STRIDE = 151
GREEDY_TOKENS = 32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--make-model", required=True, help="the make-model flags that made --model")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--native-dtype", action="store_true")
    args = ap.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dtype = "auto" if args.native_dtype else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    prompts = json.load(open(args.prompts))

    records = []
    with torch.no_grad():
        for text in prompts:
            ids = tok(text, add_special_tokens=False).input_ids
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1].double()
            top = torch.topk(logits, 16)
            greedy = []
            past = out.past_key_values
            nxt = int(torch.argmax(out.logits[0, -1]))
            for _ in range(GREEDY_TOKENS):
                greedy.append(nxt)
                step = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = step.past_key_values
                nxt = int(torch.argmax(step.logits[0, -1]))
            records.append({
                "text": text,
                "ids": ids,
                "sampled_logits": [float("%.9g" % v) for v in logits[::STRIDE].tolist()],
                "top_ids": top.indices.tolist(),
                "top_logits": [float("%.9g" % v) for v in top.values.tolist()],
                "greedy": greedy,
            })
    result = {
        "make_model": args.make_model,
        "compute_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "stride": STRIDE,
        "vocab_size": model.config.vocab_size,
        "transformers": __import__("transformers").__version__,
        "torch": torch.__version__,
        "prompts": records,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"{args.out}: {len(records)} prompts", file=sys.stderr)


if __name__ == "__main__":
    main()
