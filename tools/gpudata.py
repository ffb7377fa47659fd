"""Prepare `.gpudata/`, the data folder a GPU run carries (the device tool takes at most 64 MiB a call).

    python3 tools/gpudata.py [--src .data] [--dst .gpudata] [--with imdb,gpt2-tokenizer]
    run(command=..., carry=[".whl", ".gpudata"])    # tests/gpu/device_run.sh and scripts/gpu/* read it

What goes in: minilm/ (all-MiniLM-L6-v2), rt_polarity.tsv and wiki.txt, and what --with names.
all-MiniLM-L6-v2's fp32 weights are 87 MiB, more than one call carries, so its floating-point tensors are stored
rounded to fp16 (44 MiB). Every loader upcasts them back to fp32 (trtrun.export's `.float()`), so every side of
a comparison on the GPU machine (onnxruntime fp32, PyTorch fp32, trtrun) runs the same rounded model: a
trained model whose weights moved by at most 2^-11 relative, which is what real-weight fidelity runs need (real
activation ranges, real outliers). It is not bit-identical to the published model; results say "MiniLM
(weights rounded to fp16 for transport)". Files larger than one call (SmolLM2's GGUF, the Ray wheel) travel
in parts over consecutive calls: docs/ray.md and scripts/pack_ray.sh.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

LIMIT = 64 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=".data", help="the data folder (../shared/data/get-data.sh's)")
    ap.add_argument("--dst", default=".gpudata")
    ap.add_argument("--with", dest="extra", default="", help="more entries of --src to copy (e.g. imdb.tsv)")
    a = ap.parse_args()
    src, dst = Path(a.src), Path(a.dst)
    if not (src / "minilm" / "model.safetensors").is_file():
        print(f"error: {src}/minilm/model.safetensors is missing (../shared/data/get-data.sh {src})", file=sys.stderr)
        return 2
    import torch
    from safetensors.torch import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "minilm", dst / "minilm", ignore=shutil.ignore_patterns("model.safetensors"))
    sd = load_file(src / "minilm" / "model.safetensors")
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              dst / "minilm" / "model.safetensors", metadata={"format": "pt", "trtrun": "rounded to fp16"})
    for name in ["rt_polarity.tsv", "wiki.txt", *filter(None, a.extra.split(","))]:
        p = src / name
        if not p.exists():
            print(f"error: {p} is missing", file=sys.stderr)
            return 2
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst / name)
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"{dst}: {size / 2**20:.1f} MiB" + (" (over one call's 64 MiB with the checkout: carry less)"
                                                if size > LIMIT - (8 << 20) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
