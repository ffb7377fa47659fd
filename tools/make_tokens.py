"""Write the token-id files the paper sweep uses (bench/tokens/*.npz), so the GPU machine needs neither the
data folder nor a tokenizer: Wikipedia paragraphs (data folder's wiki.txt, file order) tokenized by the
model's own tokenizer, without special tokens, concatenated, first 32,768 ids.

    python3 tools/make_tokens.py            (TRTRUN_DATA selects the data folder)
"""

from __future__ import annotations

import sys
from pathlib import Path

from trtrun import data
from trtrun.bench.inputs import DEFAULT_STREAM_TOKENS, tokenize_stream, write_token_file

TOKENS = Path(__file__).resolve().parents[1] / "bench" / "tokens"  # beside the sweep configs that use them
# file -> tokenizer folder in the data folder. bert-base-uncased's WordPiece vocabulary (30522) is the one
# all-MiniLM-L6-v2 ships (data/minilm), GPT-2's byte-level BPE (50257) is data/gpt2-tokenizer.
FILES = {"wiki-bert-base-uncased.npz": "minilm", "wiki-gpt2.npz": "gpt2-tokenizer"}


def main() -> int:
    texts = data.load_texts("wiki")
    for name, sub in FILES.items():
        tok = data.load_tokenizer(data.data_dir() / sub)
        ids = tokenize_stream(tok, texts, DEFAULT_STREAM_TOKENS)
        path = write_token_file(TOKENS / name, ids, tokenizer=f"{sub} ({type(tok).__name__}, "
                                f"vocabulary {len(tok)})", source="wiki.txt (Wikipedia paragraphs, file order)")
        print(f"{path}: {ids.size} ids, max {ids.max()}, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
