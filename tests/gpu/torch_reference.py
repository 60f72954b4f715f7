#!/usr/bin/env python3
"""The same model in PyTorch + transformers on the same GPU, as the reference figure for
`shardlm bench --device cuda`: prefill tok/s of one prompt and decode tok/s of greedy tokens
(batch 1, bf16, KV cache on, median of 3 timed runs after a warm-up).

  python3 tests/gpu/torch_reference.py --model DIR [--prompt-tokens 512] [--decode-tokens 64]
"""
import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    a = ap.parse_args()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(0, 150000, (1, a.prompt_tokens), device="cuda")
    prefill, decode = [], []
    with torch.inference_mode():
        for run in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)  # only the last row's logits, as shardlm
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(a.decode_tokens):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if run:
                prefill.append(a.prompt_tokens / (t1 - t0))
                decode.append(a.decode_tokens / (t2 - t1))
    print(json.dumps({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0),
                      "prefill_tok_s": statistics.median(prefill), "decode_tok_s": statistics.median(decode)}))


if __name__ == "__main__":
    main()
