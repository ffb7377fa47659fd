"""Hand-made plans shared by the tests of the plan format, the reference backend, the checks and the fuzzer:
`tiny_plan` builds plans by hand (not by the builder), `write_raw` and `split_file` write and read the file
format independently of trtrun.plan (from docs/plan-format.md), for corrupt and odd files.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from trtrun.plan import Plan

# ---------------------------------------------------------------------------------------------
# Hand-made tiny plans
# ---------------------------------------------------------------------------------------------

# tiny_plan's sizes for a plan that is lowered for the GPU runtime (trtrun.runtime.lower): one head of 32, the smallest
# head size its attention kernels take (GPU_HEAD_SIZES), where the default's heads of 8 are refused by name. Tests that
# need several heads pass hidden=64, heads=2 instead.
GPU_TINY = {"hidden": 32, "heads": 1}


def _assign_dtypes(ops, outputs, precision):
    """Tensor dtypes by docs/plan-format.md "Tensor dtypes the builder chooses" (an independent
    restatement of the rule, so the tests exercise mixed-dtype plans like the builder's)."""
    float_tensors, producer, uses = [], {}, {}
    for op in ops:
        for j, t in enumerate(op["outputs"]):
            if t:
                float_tensors.append(t)
                producer[t] = (op, j)
        for j, t in enumerate(op["inputs"]):
            if t:
                uses.setdefault(t, []).append((op, j))
    dt = {}
    for t in float_tensors:
        if precision == "fp32" or t in outputs:
            dt[t] = "float32"
        elif precision == "fp16":
            dt[t] = "float16"
        else:
            pop, pj = producer[t]
            bounded = pj == 0 and (pop["type"] == "LayerNorm" or
                                   (pop["type"] == "Embedding" and pop["weights"].get("gamma")))
            ok = bool(uses.get(t)) and all(
                (op["type"] == "Linear" and j == 0) or (op["type"] == "Attention" and j == 0)
                or (op["type"] == "LayerNorm" and j == 1 and bounded)
                for op, j in uses.get(t, []))
            dt[t] = "float16" if ok else "float32"
    return dt


def tiny_plan(precision="fp32", arch="encoder", *, hidden=16, heads=2, layers=1, vocab=50, max_pos=40,
              type_vocab=2, inter=None, profile=None, seed=0, activation=None, eps=1e-12) -> Plan:
    """A small random-weight BERT-like (encoder) or GPT-2-like (decoder) plan, built by hand."""
    rng = np.random.default_rng(seed)
    N, H = hidden, heads
    D = N // H
    inter = inter or 4 * N
    act = activation or ("gelu_erf" if arch == "encoder" else "gelu_tanh")
    W: dict[str, np.ndarray] = {}
    ops: list[dict] = []
    wtype: dict[str, str] = {}  # weight name -> "table"/"linear"/"ln"

    def weight(name, arr, kind):
        W[name] = np.asarray(arr, np.float64)
        wtype[name] = kind
        return name

    def linear(name, x, K, Nout, y, act="none"):
        w = weight(f"{name}.weight", rng.normal(0, 1 / np.sqrt(K), (K, Nout)), "linear")
        b = weight(f"{name}.bias", rng.normal(0, 0.1, Nout), "linear")
        ops.append({"type": "Linear", "name": name, "inputs": [x], "outputs": [y],
                    "weights": {"weight": w, "bias": b}, "attrs": {"activation": act}})

    def ln(name, x, res, y, s=""):
        g = weight(f"{name}.gamma", 1 + rng.normal(0, 0.1, N), "ln")
        b = weight(f"{name}.beta", rng.normal(0, 0.1, N), "ln")
        ops.append({"type": "LayerNorm", "name": name, "inputs": [x, res], "outputs": [y] + ([s] if s else []),
                    "weights": {"gamma": g, "beta": b}, "attrs": {"epsilon": eps}})

    def attention(name, qkv, y, causal):
        ops.append({"type": "Attention", "name": name, "inputs": [qkv, "attention_mask"], "outputs": [y],
                    "weights": {}, "attrs": {"num_heads": H, "head_size": D, "scale": 1 / np.sqrt(D),
                                             "causal": causal}})

    emb_w = {"word": weight("emb.word", rng.normal(0, 1, (vocab, N)), "table"),
             "position": weight("emb.position", rng.normal(0, 0.5, (max_pos, N)), "table")}
    if arch == "encoder":
        inputs = ["input_ids", "attention_mask", "token_type_ids"]
        emb_w["token_type"] = weight("emb.token_type", rng.normal(0, 0.5, (type_vocab, N)), "table")
        emb_w["gamma"] = weight("emb.gamma", 1 + rng.normal(0, 0.1, N), "ln")
        emb_w["beta"] = weight("emb.beta", rng.normal(0, 0.1, N), "ln")
        ops.append({"type": "Embedding", "name": "emb", "inputs": ["input_ids", "token_type_ids"],
                    "outputs": ["h0"], "weights": emb_w, "attrs": {"epsilon": eps, "position_offset": 0}})
        h = "h0"
        for l in range(layers):
            p = f"l{l}"
            linear(f"{p}.qkv", h, N, 3 * N, f"{p}.qkv_out")
            attention(f"{p}.attn", f"{p}.qkv_out", f"{p}.ctx", False)
            linear(f"{p}.attn_out", f"{p}.ctx", N, N, f"{p}.attn_proj")
            ln(f"{p}.ln1", f"{p}.attn_proj", h, f"{p}.h1")
            linear(f"{p}.fc1", f"{p}.h1", N, inter, f"{p}.inter", act)
            linear(f"{p}.fc2", f"{p}.inter", inter, N, f"{p}.ffn")
            out = "last_hidden_state" if l == layers - 1 else f"{p}.h2"
            ln(f"{p}.ln2", f"{p}.ffn", f"{p}.h1", out)
            h = out
    else:
        inputs = ["input_ids", "attention_mask"]
        ops.append({"type": "Embedding", "name": "emb", "inputs": ["input_ids", ""], "outputs": ["res0"],
                    "weights": emb_w, "attrs": {}})
        ln("l0.ln1", "res0", "", "l0.x")
        res, x = "res0", "l0.x"
        for l in range(layers):
            p = f"l{l}"
            linear(f"{p}.qkv", x, N, 3 * N, f"{p}.qkv_out")
            attention(f"{p}.attn", f"{p}.qkv_out", f"{p}.ctx", True)
            linear(f"{p}.proj", f"{p}.ctx", N, N, f"{p}.a")
            ln(f"{p}.ln2", f"{p}.a", res, f"{p}.x2", f"{p}.res1")
            linear(f"{p}.fc", f"{p}.x2", N, inter, f"{p}.inter", act)
            linear(f"{p}.fc_proj", f"{p}.inter", inter, N, f"{p}.m")
            if l == layers - 1:
                ln("ln_f", f"{p}.m", f"{p}.res1", "last_hidden_state")
            else:
                ln(f"l{l + 1}.ln1", f"{p}.m", f"{p}.res1", f"l{l + 1}.x", f"l{l + 1}.res0")
                res, x = f"l{l + 1}.res0", f"l{l + 1}.x"
    for op in ops:
        op["precision"] = precision
    outputs = ["last_hidden_state"]
    dts = _assign_dtypes(ops, outputs, precision)
    tensors = {n: {"dtype": "int64", "shape": ["B", "S"]} for n in inputs}
    for op in ops:
        for t in op["outputs"]:
            tensors[t] = {"dtype": dts[t], "shape": ["B", "S", 3 * N if t.endswith("qkv_out")
                                                       else inter if t.endswith("inter") else N]}
    wdt = {"fp32": {"table": "float32", "linear": "float32", "ln": "float32"},
           "fp16": {"table": "float16", "linear": "float16", "ln": "float16"},
           "hybrid": {"table": "float16", "linear": "float16", "ln": "float32"}}[precision]
    weights = {k: v.astype(wdt[wtype[k]]) for k, v in W.items()}
    header = {
        "precision": precision, "tf32": False,
        "profile": profile or {"batch": [1, 2, 8], "seq": [1, 16, max_pos]},
        "source": {"path": "hand-made", "sha256": "0" * 64, "producer": "tests", "opset": 17},
        "model": {"arch": arch, "hidden": N, "num_heads": H, "num_layers": layers, "vocab_size": vocab,
                  "max_position": max_pos},
        "inputs": [{"name": n, **tensors[n]} for n in inputs],
        "outputs": [{"name": n, **tensors[n]} for n in outputs],
        "tensors": tensors, "ops": ops,
        "builder": {"version": "test", "date": "2026-11-26", "passes": ["by-hand"]},
    }
    return Plan.from_parts(header, weights)


# ---------------------------------------------------------------------------------------------
# An independent writer of the file format (from docs/plan-format.md), for corrupt/odd files
# ---------------------------------------------------------------------------------------------


def write_raw(path, header, blob: bytes, *, version=1, reserved=0, magic=b"TRTRUNPL"):
    hj = header if isinstance(header, bytes) else json.dumps(header).encode()
    pre = magic + struct.pack("<IIQQ", version, reserved, len(hj), len(blob))
    body = pre + hj
    body += b"\0" * ((-len(body)) % 256) + blob
    path.write_bytes(body + hashlib.sha256(body).digest())
    return path


def split_file(path):
    """(header dict, blob bytes) of a plan file, parsed by hand."""
    data = path.read_bytes()
    H, W = struct.unpack_from("<QQ", data, 16)
    start = (32 + H + 255) // 256 * 256
    return json.loads(data[32:32 + H]), data[start:start + W]


def write_parts(path, header: dict, arrays: dict, *, version=None):
    """A plan file of `header` (its `weights` entries made here) and `arrays`, laid out as docs/plan-format.md says
    (each weight at the next 256-byte offset) and written by write_raw: no validation on the way, so a test can
    write what Plan.from_parts would refuse. The version is `version`, else the one the plan needs
    (trtrun.plan.format.required_version: 3 with an attribute older readers would ignore, 2 with a float8 weight or
    an fp8 op, else 1)."""
    from trtrun.plan.format import required_version

    hdr = json.loads(json.dumps({k: v for k, v in header.items() if k != "weights"}, allow_nan=True))
    entries, blob = {}, bytearray()
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        blob += b"\0" * ((-len(blob)) % 256)
        entries[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": len(blob), "nbytes": int(a.nbytes)}
        blob += a.reshape(-1).view(np.uint8).tobytes()
    hdr["weights"] = entries
    hdr["format"] = "trtrun-plan"
    hdr["version"] = version if version is not None else required_version(hdr)
    return write_raw(path, json.dumps(hdr, allow_nan=True).encode(), bytes(blob), version=hdr["version"])
