#!/usr/bin/env python3
"""Writes the Hugging Face `tokenizers` reference for shardlm's tokenizer golden test.

For each string of --strings (a JSON list) it records the ids of
Tokenizer.from_file(--tokenizer).encode(s, add_special_tokens=False) and the decode of those ids
(skip_special_tokens=False), as a JSON list of {"text", "ids", "decoded"} objects in input order.

    python3 tests/reference/tokenizer_golden.py --tokenizer assets/qwen3/tokenizer.json \
        --strings tests/data/tokenizer/strings.json --out tests/data/tokenizer/qwen3_golden.json

Needs only `pip install tokenizers` (no torch, no transformers).
"""
import argparse
import json
import sys

import tokenizers
from tokenizers import Tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="path to tokenizer.json")
    ap.add_argument("--strings", required=True, help="JSON list of strings to encode")
    ap.add_argument("--out", required=True, help="where to write the golden JSON")
    args = ap.parse_args()

    tok = Tokenizer.from_file(args.tokenizer)
    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        print(f"{args.strings}: must hold a JSON list of strings", file=sys.stderr)
        return 1

    cases = []
    for s in strings:
        ids = tok.encode(s, add_special_tokens=False).ids
        cases.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)})

    with open(args.out, "w", encoding="utf-8") as f:
        # One case per line; ensure_ascii keeps control characters and odd whitespace visible.
        f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=True) for c in cases) + "\n]\n")
    n_ids = sum(len(c["ids"]) for c in cases)
    print(f"wrote {args.out}: {len(cases)} strings, {n_ids} ids (tokenizers {tokenizers.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
