"""Microbenchmark of the memory-bound plugins (layernorm, embedding, gelu) against PyTorch doing the same
work, with achieved bandwidth (bytes each kernel must move / time) beside a device-to-device copy's.

    python3 tools/kernels_rowops.py [--out FILE]

Timing as tools/kernels_attention.py: CUDA-graph replays, median per call, rotated random inputs.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests" / "gpu"))
sys.path.insert(0, str(REPO))

import test_plugins as H  # noqa: E402
from kernels_attention import card, time_graph  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    P, why = H.load_plugins()
    if P is None:
        print(f"plugin binding not found: {why}")
        return 1
    st = lambda: torch.cuda.current_stream().cuda_stream  # noqa: E731
    lines = [f"# trtrun row kernels vs torch ({torch.__version__}), {card()}, {datetime.date.today().isoformat()}",
             f"{'kernel':44s} | {'ours ms':>8} {'GB/s':>7} | {'torch ms':>8} {'GB/s':>7} | ours/torch"]
    print(lines[0])
    print(lines[1])

    def report(name, nbytes, t_o, t_t):
        line = f"{name:44s} | {t_o:8.4f} {nbytes / t_o / 1e6:7.0f} | {t_t:8.4f} {nbytes / t_t / 1e6:7.0f} | {t_o / t_t:6.2f}"
        print(line, flush=True)
        lines.append(line)

    # device copy bandwidth (read + write), the ceiling for all of these
    a = torch.randn(1 << 28, device="cuda")
    b = torch.empty_like(a)
    t = time_graph(torch, lambda i: b.copy_(a), 5, 20)
    report("copy 1 GiB fp32 (ceiling)", 2 * a.numel() * 4, t, t)
    del a, b

    nb = 4
    for rows, n in [(32 * 128, 768), (32 * 512, 768), (1 * 128, 768), (8 * 128, 1600)]:
        xs = [torch.randn(rows, n, device="cuda") * 3 + 1 for _ in range(nb)]
        rs = [torch.randn(rows, n, device="cuda").half() for _ in range(nb)]
        g = torch.rand(n, device="cuda") + 0.5
        bt = torch.randn(n, device="cuda")
        ys = [torch.empty(rows, n, device="cuda", dtype=torch.float16) for _ in range(nb)]
        ss = [torch.empty(rows, n, device="cuda") for _ in range(nb)]

        def ours(i, k=None):
            k = i % nb
            P.layernorm(xs[k].data_ptr(), P.F32, rs[k].data_ptr(), P.F16, g.data_ptr(), bt.data_ptr(), P.F32,
                        ys[k].data_ptr(), P.F16, ss[k].data_ptr(), P.F32, rows, n, 1e-5, P.HYBRID, st())

        def theirs(i):
            k = i % nb
            s = xs[k] + rs[k].float()
            ss[k].copy_(s)
            ys[k].copy_(F.layer_norm(s, (n,), g, bt, 1e-5))

        report(f"layernorm hybrid x32+r16->y16,sum32 {rows}x{n}", rows * n * (4 + 2 + 2 + 4),
               time_graph(torch, ours, 20, 30), time_graph(torch, theirs, 20, 30))

    # BERT's post-norm LayerNorm in hybrid plans: fp16 Linear output + fp16 residual -> fp16 (no sum written)
    for rows, n in [(32 * 128, 768), (32 * 512, 768), (1 * 128, 768), (8 * 128, 768), (64 * 64, 384)]:
        xs = [(torch.randn(rows, n, device="cuda") * 3 + 1).half() for _ in range(nb)]
        rs = [torch.randn(rows, n, device="cuda").half() for _ in range(nb)]
        g = torch.rand(n, device="cuda") + 0.5
        bt = torch.randn(n, device="cuda")
        ys = [torch.empty(rows, n, device="cuda", dtype=torch.float16) for _ in range(nb)]

        def ours(i):
            k = i % nb
            P.layernorm(xs[k].data_ptr(), P.F16, rs[k].data_ptr(), P.F16, g.data_ptr(), bt.data_ptr(), P.F32,
                        ys[k].data_ptr(), P.F16, 0, P.F32, rows, n, 1e-12, P.HYBRID, st())

        def theirs(i):
            k = i % nb
            ys[k].copy_(F.layer_norm(xs[k].float() + rs[k].float(), (n,), g, bt, 1e-12))

        report(f"layernorm hybrid x16+r16->y16 (post-norm) {rows}x{n}", rows * n * (2 + 2 + 2),
               time_graph(torch, ours, 20, 30), time_graph(torch, theirs, 20, 30))

    for B, S, n in [(32, 128, 768), (32, 512, 768), (1, 128, 768)]:
        V = 30522
        word = torch.randn(V, n, device="cuda").half()
        pos = torch.randn(512, n, device="cuda").half()
        typ = torch.randn(2, n, device="cuda").half()
        g = torch.rand(n, device="cuda") + 0.5
        bt = torch.randn(n, device="cuda")
        ids = [torch.randint(0, V, (B, S), device="cuda", dtype=torch.int32) for _ in range(nb)]
        tts = [torch.randint(0, 2, (B, S), device="cuda", dtype=torch.int32) for _ in range(nb)]
        ys = [torch.empty(B, S, n, device="cuda", dtype=torch.float16) for _ in range(nb)]

        def ours(i):
            k = i % nb
            P.embedding(ids[k].data_ptr(), tts[k].data_ptr(), word.data_ptr(), pos.data_ptr(), typ.data_ptr(), P.F16,
                        g.data_ptr(), bt.data_ptr(), P.F32, ys[k].data_ptr(), P.F16, B, S, n, 0, 1e-12, P.HYBRID, st())

        def theirs(i):
            k = i % nb
            e = word[ids[k]].float() + pos[:S].float()[None] + typ[tts[k]].float()
            ys[k].copy_(F.layer_norm(e, (n,), g, bt, 1e-12))

        report(f"embedding+LN hybrid f16 tables {B}x{S}x{n}", B * S * n * (2 * 3 + 2),
               time_graph(torch, ours, 20, 30), time_graph(torch, theirs, 20, 30))

    for count in [32 * 128 * 3072, 32 * 512 * 3072]:
        ys = [torch.randn(count, device="cuda").half() for _ in range(nb)]

        def ours(i):
            P.gelu(ys[i % nb].data_ptr(), P.F16, count, False, st())

        def theirs(i):  # out of place (torch has no in-place functional GELU): same bytes moved
            F.gelu(ys[i % nb])

        report(f"gelu erf fp16 in place {count}", count * 4, time_graph(torch, ours, 20, 30),
               time_graph(torch, theirs, 20, 30))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
