#!/usr/bin/env python3
"""Mutational fuzzer for the plan loader (trtrun.plan.load_plan) and the reference backend.

Each execution takes a valid seed plan, mutates it, writes it to a file and loads it; a file that loads
is then described (Plan.summary/to_dict, what `trtrun inspect` prints), lowered for the GPU runtime
(trtrun.runtime.lower.lower_plan, pure Python), handed to the native Engine's description checks where the
extension is built (trtrun._C.Engine: on a machine without a GPU a description that passes them meets the device's
DeviceError; with one, the weights are uploaded) and run by the reference backend on a tiny input (batch <= 2,
sequence <= 4). Anything but PlanError from the load, PlanError from the lowering, InputError/ShapeError/DeviceError
from the Engine, or PlanError/InputError from the run, is a crash: the input is saved under --crashes and its path
printed (a crash inside the extension ends the process: its last lines say which execution). An execution that
takes longer than --exec-timeout seconds is a hang (saved the same way).

Mutations (seeded, reproducible for a given --seed and --jobs):
  structured  1-4 edits of the header's JSON tree (wrong types, huge/negative/NaN numbers, missing and
              extra keys, dangling or cross-kind references, reordered/duplicated/dropped list items,
              nesting up to 100,000 deep), re-serialized with a fresh checksum so they reach the validator
  header_text byte edits of the header's JSON text (fresh checksum): the JSON parser and depth check
  blob        bytes of the weights changed, incl. NaN/Inf patterns (fresh checksum): files that load and run
  bitflip     random bytes anywhere (checksum recomputed 9 times in 10)
  preamble    version, reserved and the two lengths set to edge values
  truncate    the file cut short, or grown with trailing bytes
  splice      one seed's header over another's blob
  engine      a seed plan lowered (lower_plan) and its description edited as a caller of trtrun._C.Engine could
              (attributes, weight and tensor indices, dims, weight arrays reshaped, emptied or retyped, the profile
              maxima), then handed to the Engine in a forked child, so that a crash of the extension is a finding
              with its input saved rather than the end of the run (the input: ENGINE_MAGIC, the seed file, the
              8-byte seed of the edits)
  fields      the newer fields, 1-3 edits with a fresh checksum: fp8 Linears (precision flipped, scales added,
              dropped, reshaped, retyped, their values NaN/inf/0/negative/subnormal), the Attention's num_kv_heads,
              rotary_dim, window, qk_norm_epsilon, relative_max_distance, head_size, ... at edge values, its q_norm,
              k_norm, inv_freq, relative_bias and alibi_slopes added, dropped, resized or poisoned, the profile's
              longest sequence up to 2^31 - 1 with the position table gone (the lowering's table sizes)

Seed plans default to the hand-made tiny plans of tests/handmade_plans.py (encoder and decoder, fp32/fp16/hybrid,
one with a Pool output) and, heads of 32 so that they pass the Engine's checks, an fp8 plan, a mixed one (fp8 with
static and per-tensor scales, hybrid, fp32), a grouped-query decoder with a partial rotary, Qwen3's q/k norm and a
window but no position table, an encoder with a relative-position table and a window, and an fp16 ALiBi decoder;
--plan adds plan files of your own.

    python scripts/fuzz_plan.py --execs 1000000 --jobs 2 --seed 1 --crashes fuzz-crashes
    python scripts/fuzz_plan.py --time 600            # as many as fit in ten minutes
    python scripts/fuzz_plan.py --time 300 --max-memory 4   # an allocation past 4 GiB is a finding (MemoryError)

At the end it prints the counts by outcome (PlanError split by the field named), executions per second
and the peak RSS of each worker; the exit status is 1 when anything crashed or hung.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import re
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MAGIC = b"TRTRUNPL"
_DEEP = "\u0000deep:"  # placeholder string (+ depth) replaced by raw nested brackets after json.dumps
_DEEP_RE = re.compile(re.escape(json.dumps(_DEEP)[:-1]) + r'(\d+)"')

# ------------------------------------------------------------------------------------------ file writing


def build_file(header: bytes, blob: bytes, *, version=1, reserved=0, magic=MAGIC, H=None, W=None,
               checksum=True) -> bytes:
    """A plan file from its parts (docs/plan-format.md), written independently of trtrun.plan."""
    H = len(header) if H is None else H
    W = len(blob) if W is None else W
    body = magic + struct.pack("<IIQQ", version, reserved, H, W) + header
    body += b"\0" * ((-len(body)) % 256) + blob
    digest = hashlib.sha256(body).digest() if checksum else os.urandom(32)
    return body + digest


def file_version(data: bytes) -> int:
    """The preamble's format version of a seed file (1, or 2 for fp8): what a mutant keeps unless it edits it."""
    return struct.unpack_from("<I", data, 8)[0]


def header_version(hdr) -> int:
    """The version a mutated header claims (its "version" when that is 1 or 2), for the preamble to agree with it;
    the preamble mutations test disagreement on their own."""
    v = hdr.get("version") if isinstance(hdr, dict) else None
    return v if v in (1, 2) and not isinstance(v, bool) else 1


def split_file(data: bytes) -> tuple[dict, bytes]:
    H, W = struct.unpack_from("<QQ", data, 16)
    start = (32 + H + 255) // 256 * 256
    return json.loads(data[32:32 + H]), data[start:start + W]


def dumps(header) -> bytes:
    """JSON as a crafted file would carry it: NaN/Infinity allowed, deep nesting spliced in as text."""
    s = json.dumps(header, separators=(",", ":"), allow_nan=True)
    s = _DEEP_RE.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), s)
    return s.encode("utf-8")


# ------------------------------------------------------------------------------------------ mutation
INTS = [0, 1, -1, 2, 3, 7, 255, 256, 257, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 62, 2 ** 63 - 1, 2 ** 63,
        2 ** 64, -2 ** 63, 10 ** 30]
FLOATS = [0.0, -0.0, 1e-45, 1e-12, 0.5, 1.5, 16.5, -1.0, 3.4e38, 3.5e38, 1e308, float("nan"), float("inf"),
          float("-inf")]
ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "float8_e4m3fn": 1}
STRINGS = ["", "B", "S", "x", "float32", "float16", "int64", "int8", "bfloat16", "fp16", "hybrid", "gelu_erf",
           "relu", "Linear", "Embedding", "Attention", "LayerNorm", "Pool", "mean", "cls", "input_ids", "attention_mask",
           "token_type_ids", "last_hidden_state", "\x1b[2J", "\ud800", "n" * 5000, "fp8", "mixed", "float8_e4m3fn",
           "silu", "RMSNorm", "weight_scale", "x_scale", "q_norm", "k_norm", "inv_freq", "relative_bias", "alibi_slopes"]
# edge values for the newer attributes (ints around the kernels' and formats' limits, and floats that poison)
EDGE_ATTRS = [-2, -1, 0, 1, 2, 3, 4, 8, 15, 16, 31, 32, 33, 48, 64, 128, 256, 257, 2 ** 30, 2 ** 30 + 1, 2 ** 31 - 1,
              2 ** 31, 2 ** 62, float("nan"), float("inf"), -0.0, 1e-45, 1e-6, 3.5e38, None, True, "x", [1]]
EDGE_VALUES = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-40, 1e-45, 3.4e38, 65504.0, 1e37]
ATTENTION_ATTRS = ["num_heads", "head_size", "num_kv_heads", "rotary_dim", "rotary_scale", "window", "qk_norm_epsilon",
                   "relative_max_distance", "relative_bidirectional", "alibi_symmetric", "causal", "scale"]
ATTENTION_ROLES = ["q_norm", "k_norm", "inv_freq", "relative_bias", "alibi_slopes"]


class Mutator:
    def __init__(self, seeds: list[bytes]):
        self.seeds = []
        for data in seeds:
            hdr, blob = split_file(data)
            names = sorted(set(hdr["tensors"]) | set(hdr["weights"]) | {op["name"] for op in hdr["ops"]})
            self.seeds.append((data, hdr, blob, names))
        self._json = [json.dumps(hdr) for _, hdr, _, _ in self.seeds]  # json.loads copies faster than deepcopy
        self.strategies = [("structured", 45), ("fields", 10), ("header_text", 9), ("blob", 9), ("bitflip", 8),
                           ("preamble", 5), ("truncate", 5), ("splice", 5), ("engine", 4)]
        self._p = np.array([w for _, w in self.strategies], float)
        self._p /= self._p.sum()

    def mutate(self, rng: np.random.Generator) -> tuple[str, bytes]:
        kind = self.strategies[rng.choice(len(self.strategies), p=self._p)][0]
        i = rng.integers(len(self.seeds))
        data, _, blob, names = self.seeds[i]
        return kind, getattr(self, "_" + kind)(rng, data, json.loads(self._json[i]), blob, names)

    # --- whole-file byte mutations
    def _bitflip(self, rng, data, hdr, blob, names):
        b = bytearray(data)
        for _ in range(rng.integers(1, 17)):
            i = rng.integers(len(b) - 32)
            b[i] = rng.integers(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.integers(8))
        if rng.random() < 0.9:
            b[-32:] = hashlib.sha256(bytes(b[:-32])).digest()
        return bytes(b)

    def _preamble(self, rng, data, hdr, blob, names):
        H, W = struct.unpack_from("<QQ", data, 16)
        size = len(data)
        edge = [0, 1, 31, 32, 63, 64, H - 1, H + 1, W - 1, W + 1, size, size - 64, 2 ** 32, 2 ** 63, 2 ** 64 - 1,
                int(rng.integers(2 ** 63))]
        version, reserved = file_version(data), 0
        field = rng.integers(4)
        if field == 0:
            version = int(rng.choice([0, 1, 2, 3, 255, 2 ** 32 - 1]))
        elif field == 1:
            reserved = int(rng.choice([1, 2 ** 31, 2 ** 32 - 1]))
        elif field == 2:
            H = int(edge[rng.integers(len(edge))]) % 2 ** 64
        else:
            W = int(edge[rng.integers(len(edge))]) % 2 ** 64
        start = (32 + struct.unpack_from("<Q", data, 16)[0] + 255) // 256 * 256
        raw_h = data[32:32 + struct.unpack_from("<Q", data, 16)[0]]
        out = bytearray(build_file(raw_h, data[start:-32], version=version, reserved=reserved, H=H, W=W))
        if rng.random() < 0.5:
            out[-32:] = os.urandom(32)
        return bytes(out)

    def _truncate(self, rng, data, hdr, blob, names):
        if rng.random() < 0.7:
            return data[:rng.integers(len(data))]
        return data + bytes(rng.integers(0, 256, rng.integers(1, 600), dtype=np.uint8))

    def _splice(self, rng, data, hdr, blob, names):
        _, hdr2, _, _ = self.seeds[rng.integers(len(self.seeds))]
        return build_file(dumps(hdr2), blob, version=header_version(hdr2))

    def _blob(self, rng, data, hdr, blob, names):
        b = bytearray(blob)
        if not b:
            return build_file(dumps(hdr), bytes(b), version=header_version(hdr))
        pats = [b"\x00\x7c", b"\x00\xfc", b"\x00\x7e", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\xff\x7b",
                b"\xff\xff\x7f\x7f"]
        for _ in range(rng.integers(1, 33)):
            i = int(rng.integers(len(b)))
            p = pats[rng.integers(len(pats))] if rng.random() < 0.5 else bytes([rng.integers(256)])
            b[i:i + len(p)] = p
            del b[len(blob):]
        return build_file(dumps(hdr), bytes(b), version=header_version(hdr))

    def _header_text(self, rng, data, hdr, blob, names):
        t = bytearray(dumps(hdr))
        alphabet = b'{}[]",:0123456789-+.eEtrufalsn \\/uNaI\x00\xff'
        for _ in range(rng.integers(1, 9)):
            i = int(rng.integers(len(t) + 1))
            r = rng.random()
            c = alphabet[rng.integers(len(alphabet))]
            if r < 0.4 and i < len(t):
                t[i] = c
            elif r < 0.7:
                t[i:i] = bytes([c]) * int(rng.choice([1, 1, 2, 100, 5000]))
            else:
                del t[i:i + int(rng.integers(1, 40))]
        return build_file(bytes(t), blob, version=file_version(data))

    def _engine(self, rng, data, hdr, blob, names):
        return ENGINE_MAGIC + data + int(rng.integers(2 ** 63)).to_bytes(8, "little")

    # --- the newer fields: fp8 Linears, the Attention's extras, the profile that sizes the lowering's tables
    def _fields(self, rng, data, hdr, blob, names):
        blob = bytearray(blob)
        for _ in range(rng.integers(1, 4)):
            try:
                self._field_edit(rng, hdr, blob)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError):
                pass  # an earlier edit of this mutant broke what this one reads: the mutant is hostile enough
        ops = hdr.get("ops") if isinstance(hdr.get("ops"), list) else []
        fp8 = any(isinstance(o, dict) and o.get("precision") == "fp8" for o in ops) or any(
            isinstance(e, dict) and e.get("dtype") == "float8_e4m3fn" for e in (hdr.get("weights") or {}).values())
        if rng.random() < 0.9:  # the version the plan needs, so that the edit reaches the schema
            hdr["version"] = 2 if fp8 else 1
        return build_file(dumps(hdr), bytes(blob), version=header_version(hdr))

    @staticmethod
    def _add_weight(hdr, blob: bytearray, name: str, a: np.ndarray) -> None:
        """A new weight entry at the blob's end (256-aligned), its bytes appended."""
        a = np.ascontiguousarray(a)
        blob += b"\0" * ((-len(blob)) % 256)
        hdr["weights"][name] = {"dtype": a.dtype.name, "shape": list(a.shape), "offset": len(blob),
                                "nbytes": int(a.nbytes)}
        blob += a.reshape(-1).view(np.uint8).tobytes()

    def _random_array(self, rng, n: int) -> np.ndarray:
        shape = [n] if rng.random() < 0.8 else [int(rng.integers(0, 4)), n]
        dtype = [np.float32, np.float32, np.float16, np.int32, "float8_e4m3fn"][rng.integers(5)]
        if dtype == "float8_e4m3fn":
            import ml_dtypes
            return rng.uniform(0.5, 2, shape).astype(ml_dtypes.float8_e4m3fn)
        return rng.uniform(0.01, 2, shape).astype(dtype)

    def _poison(self, rng, hdr, blob: bytearray, name: str) -> None:
        """One element of weight `name` (float32 or float16) set to an edge value, in the blob."""
        e = hdr["weights"][name]
        size = {"float32": 4, "float16": 2}.get(e["dtype"])
        if size is None or e["nbytes"] < size:
            return
        i = int(rng.integers(e["nbytes"] // size))
        with np.errstate(over="ignore"):  # 3.4e38 as float16 is inf: one more edge value
            v = np.array([EDGE_VALUES[rng.integers(len(EDGE_VALUES))]], e["dtype"])
        blob[e["offset"] + i * size:e["offset"] + (i + 1) * size] = v.tobytes()

    def _field_edit(self, rng, hdr, blob: bytearray) -> None:
        ops = [o for o in hdr["ops"] if isinstance(o, dict)]
        att = [o for o in ops if o.get("type") == "Attention"]
        lin = [o for o in ops if o.get("type") == "Linear"]
        r = rng.random()
        if r < 0.3 and att:  # an attribute at an edge value, or gone
            a = att[rng.integers(len(att))].setdefault("attrs", {})
            key = ATTENTION_ATTRS[rng.integers(len(ATTENTION_ATTRS))]
            if rng.random() < 0.15:
                a.pop(key, None)
            else:
                a[key] = EDGE_ATTRS[rng.integers(len(EDGE_ATTRS))]
        elif r < 0.5 and att:  # a weight role of the extras: added (sized by the op's heads), dropped or poisoned
            op = att[rng.integers(len(att))]
            w = op.setdefault("weights", {})
            role = ATTENTION_ROLES[rng.integers(len(ATTENTION_ROLES))]
            c = rng.random()
            if c < 0.3 and role in w:
                del w[role]
            elif c < 0.6 and w.get(role) in hdr["weights"]:
                self._poison(rng, hdr, blob, w[role])
            else:
                at = op.get("attrs", {})
                H, D = at.get("num_heads"), at.get("head_size")
                H, D = (H if isinstance(H, int) and 0 < H < 64 else 2), (D if isinstance(D, int) and 0 < D < 512 else 4)
                n = {"q_norm": D, "k_norm": D, "inv_freq": max(1, D // 4), "alibi_slopes": H}.get(role, 8)
                n += int(rng.choice([0, 0, 0, -1, 1]))
                if role == "relative_bias":
                    a = rng.normal(0, 1, (max(n, 0), H)).astype(np.float32)
                    op.setdefault("attrs", {}).update(relative_max_distance=int(rng.choice([1, 2, 8, 20, 2 ** 31 - 1])),
                                                      relative_bidirectional=bool(rng.integers(2)))
                else:
                    a = self._random_array(rng, max(n, 0))
                    if role == "inv_freq":
                        op.setdefault("attrs", {})["rotary_dim"] = 2 * max(n, 0)
                    if role in ("q_norm", "k_norm"):
                        op.setdefault("attrs", {}).setdefault("qk_norm_epsilon", 1e-6)
                name = f"{op.get('name')}.{role}.fuzz"
                self._add_weight(hdr, blob, name, a)
                w[role] = name
        elif r < 0.75 and lin:  # fp8 Linears: precision, scales (presence, shape, dtype, values)
            op = lin[rng.integers(len(lin))]
            w = op.setdefault("weights", {})
            c = rng.random()
            if c < 0.25:
                op["precision"] = ["fp8", "hybrid", "fp32", "fp16"][rng.integers(4)]
            elif c < 0.45:
                role = "weight_scale" if rng.random() < 0.6 else "x_scale"
                if role in w and rng.random() < 0.4:
                    del w[role]
                else:
                    N = hdr["weights"][w["weight"]]["shape"][-1]
                    n = int(rng.choice([N, 1, N + 1, N - 1, 0, 2]))
                    a = self._random_array(rng, max(n, 0))
                    name = f"{op.get('name')}.{role}.fuzz"
                    self._add_weight(hdr, blob, name, a)
                    w[role] = name
            elif c < 0.8:
                role = ["weight_scale", "x_scale", "bias"][rng.integers(3)]
                if w.get(role) in hdr["weights"]:
                    self._poison(rng, hdr, blob, w[role])
            else:  # an fp8 weight's codes moved to another role, or a float weight under an fp8 op
                donor = [e for e in hdr["weights"].values() if e.get("dtype") == "float8_e4m3fn"]
                role = ["bias", "weight"][rng.integers(2)]
                if donor and w.get(role) in hdr["weights"]:
                    hdr["weights"][w[role]] = dict(donor[rng.integers(len(donor))])
        elif r < 0.9:  # the profile's longest sequence, beyond any position table or with it gone
            seq = hdr["profile"]["seq"]
            # within the tables' cap (cheap), past it (refused before any is made), past the kernels' and int's limits
            seq[2] = int(rng.choice([9, 64, 2 ** 16, 2 ** 26, 2 ** 30 + 1, 2 ** 31 - 1]))
            if rng.random() < 0.8:
                for o in ops:
                    if o.get("type") == "Embedding":
                        o.get("weights", {}).pop("position", None)
                if isinstance(hdr.get("model"), dict):
                    hdr["model"]["max_position"] = 2 ** 31 - 1
        else:  # the plan's precision
            hdr["precision"] = ["fp32", "fp16", "hybrid", "fp8", "mixed", "fp4"][rng.integers(6)]

    # --- structured header edits
    def _structured(self, rng, data, hdr, blob, names):
        for _ in range(rng.integers(1, 5)):
            self._edit(rng, hdr, names)
        return build_file(dumps(hdr), blob, version=header_version(hdr))

    def _paths(self, node, out, parent=None, key=None):
        out.append((parent, key, node))
        if isinstance(node, dict):
            for k, v in node.items():
                self._paths(v, out, node, k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                self._paths(v, out, node, i)

    def _value(self, rng, old, names):
        """A replacement: something of another type, an edge value of the same type, or a reference."""
        r = rng.random()
        if r < 0.15:
            return [None, True, False, [], {}, [1, 2], {"x": 1}, "x"][rng.integers(8)]
        if r < 0.25:
            return _DEEP + str(int(rng.choice([2, 10, 63, 64, 65, 1000, 100_000])))
        if isinstance(old, bool) or old is None:
            return [True, False, None, 0, 1, "true"][rng.integers(6)]
        if isinstance(old, int):
            c = rng.random()
            if c < 0.5:
                return INTS[rng.integers(len(INTS))]
            return old + int(rng.choice([-256, -2, -1, 1, 2, 256])) if c < 0.8 else -old  # Python ints
        if isinstance(old, float):
            return FLOATS[rng.integers(len(FLOATS))] if rng.random() < 0.7 else -old
        if isinstance(old, str):
            c = rng.random()
            if c < 0.5:
                return names[rng.integers(len(names))]  # a reference to something of another kind
            if c < 0.6:
                return old + "x"
            return STRINGS[rng.integers(len(STRINGS))]
        if isinstance(old, list):
            c = rng.random()
            new = list(old)
            if c < 0.3 and new:
                del new[rng.integers(len(new))]
            elif c < 0.5 and new:
                new.insert(int(rng.integers(len(new) + 1)), copy.deepcopy(new[rng.integers(len(new))]))
            elif c < 0.6:
                new.reverse()
            elif c < 0.8:
                new.append(self._value(rng, new[-1] if new else 0, names))
            else:
                new = []
            return new
        if isinstance(old, dict):
            new = dict(old)
            c = rng.random()
            if c < 0.4 and new:
                del new[list(new)[rng.integers(len(new))]]
            elif c < 0.8:
                new[names[rng.integers(len(names))] if rng.random() < 0.5 else "extra"] = \
                    self._value(rng, 0, names)
            else:
                new = {}
            return new
        return None

    def _reshape_weight(self, rng, h) -> bool:
        """A weight's shape changed with its byte count kept consistent (so the edit gets past the
        entry's own checks to the ops that index the table): a dim set to 0, 1, one less or a few more,
        or (in an extra weight nothing uses) to 0 beside a huge one."""
        ws = h.get("weights")
        if not isinstance(ws, dict) or not ws:
            return False
        e = ws[list(ws)[rng.integers(len(ws))]]
        if not (isinstance(e, dict) and isinstance(e.get("shape"), list) and e["shape"]
                and all(isinstance(d, int) for d in e["shape"]) and isinstance(e.get("dtype"), str)
                and e["dtype"] in ITEMSIZE):
            return False
        shape = list(e["shape"])
        k = int(rng.integers(len(shape)))
        shape[k] = max(0, int(rng.choice([0, 1, shape[k] - 1, shape[k] + 1, shape[k] + 3])))
        if rng.random() < 0.3:  # an extra, unused empty weight with huge other dims (0 bytes)
            shape[k] = 0
            shape.insert(int(rng.integers(len(shape) + 1)), int(rng.choice([2 ** 31, 2 ** 40, 2 ** 62])))
            e = ws.setdefault("extra.weight", dict(e))
        e["shape"] = shape
        e["nbytes"] = int(np.prod(shape, dtype=object)) * ITEMSIZE[e["dtype"]]
        return True

    def _edit(self, rng, h, names):
        if rng.random() < 0.1 and self._reshape_weight(rng, h):
            return
        paths = []
        if rng.random() < 0.4 and isinstance(h.get("ops"), list):  # the ops hold most of the semantics
            self._paths(h["ops"], paths, h, "ops")
        else:
            self._paths(h, paths)
        parent, key, node = paths[rng.integers(len(paths))]
        if parent is None:  # the root: drop or add a top-level key
            if rng.random() < 0.5 and h:
                del h[list(h)[rng.integers(len(h))]]
            else:
                h["extra" if rng.random() < 0.5 else "tf32"] = self._value(rng, 0, names)
            return
        r = rng.random()
        if r < 0.12:  # delete the key or element
            del parent[key]
        elif r < 0.2 and isinstance(parent, list) and len(parent) > 1:  # swap (e.g. ops out of order)
            j = int(rng.integers(len(parent)))
            parent[key], parent[j] = parent[j], parent[key]
        elif r < 0.28 and isinstance(parent, dict):  # rename the key (references now dangle)
            parent[names[rng.integers(len(names))] if rng.random() < 0.5 else str(key) + "_"] = parent.pop(key)
        else:
            parent[key] = self._value(rng, node, names)


# ------------------------------------------------------------------------------------------ execution
class Hang(BaseException):
    """Raised by the per-execution alarm (a BaseException: library code catching Exception lets it pass)."""


def _on_alarm(signum, frame):
    raise Hang()


def tiny_feeds(plan) -> dict:
    """A small valid-looking input for a loaded plan: batch and sequence from the profile's minima (at most
    2 and 4), ids within the tables the plan declares, one padded position."""
    B = min(2, int(plan.profile["batch"][0]))
    S = min(4, int(plan.profile["seq"][0]))
    names = [i["name"] for i in plan.inputs]
    V = plan.vocab_size or 1
    feeds = {"input_ids": (np.arange(B * S).reshape(B, S) * 7) % max(1, V)}
    if "attention_mask" in names:
        m = np.ones((B, S), np.int64)
        m[-1, -1] = 0 if S > 1 else 1
        feeds["attention_mask"] = m
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.arange(B * S).reshape(B, S) % max(1, plan.type_vocab_size or 1)
    return feeds


def _stage(msg: str, path: str) -> str:
    """The field a PlanError names, without indices and names: 'checksum', 'header.ops', ..."""
    rest = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
    field = rest.split(":", 1)[0]
    for root in ("header.ops", "header.tensors", "header.weights", "header.inputs", "header.outputs",
                 "header.profile", "header.model", "header.source", "header JSON", "header", "weights"):
        if field.startswith(root):
            return root
    return field


def _overwrite(path: Path, data: bytes) -> None:
    """Replace the file's contents without truncating it to zero first (ext4 flushes a file truncated to
    zero when it is closed, which made writing the input cost more than loading it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


ENGINE_MAGIC = b"TRTRUN-FUZZ-ENGINE-DESCRIPTION\n"
EDGE_INTS32 = [-2 ** 31, -3, -2, -1, 0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 33, 64, 127, 128, 129, 256, 257, 2 ** 30,
               2 ** 30 + 1, 2 ** 31 - 1]
OP_INT_FIELDS = ["num_heads", "head_size", "num_kv_heads", "rotary_dim", "window", "position_offset"]
OP_FLOAT_FIELDS = ["epsilon", "scale", "qk_norm_epsilon"]
ROLES = ["word", "position", "token_type", "gamma", "beta", "weight", "bias", "weight_scale", "x_scale", "rotary_cos",
         "rotary_sin", "score_bias", "q_norm", "k_norm"]


def mutate_description(low: dict, rng: np.random.Generator) -> dict:
    """A lowered plan edited as a caller of trtrun._C.Engine could pass it (1-3 edits, none of them checked by
    lower_plan): what the Engine's description checks stand between and the kernels."""
    desc = {k: v for k, v in low.items() if k != "weights"}
    desc = json.loads(json.dumps(desc))
    weights = list(low["weights"])
    ops, tensors = desc["ops"], desc["tensors"]
    for _ in range(rng.integers(1, 4)):
        r = rng.random()
        op = ops[rng.integers(len(ops))]
        if r < 0.2:
            op[OP_INT_FIELDS[rng.integers(len(OP_INT_FIELDS))]] = int(EDGE_INTS32[rng.integers(len(EDGE_INTS32))])
        elif r < 0.27:
            op[OP_FLOAT_FIELDS[rng.integers(len(OP_FLOAT_FIELDS))]] = float(EDGE_VALUES[rng.integers(len(EDGE_VALUES))])
        elif r < 0.4:  # a weight role: another index, out of range, removed, or a role the op does not read
            role = ROLES[rng.integers(len(ROLES))] if rng.random() < 0.5 or not op["weights"] else \
                list(op["weights"])[rng.integers(len(op["weights"]))]
            c = rng.random()
            if c < 0.2:
                op["weights"].pop(role, None)
            else:
                op["weights"][role] = int(rng.choice([-2, -1, len(weights), rng.integers(len(weights))]))
        elif r < 0.5:  # an input or output index
            key = "inputs" if rng.random() < 0.6 else "outputs"
            if op[key]:
                op[key][rng.integers(len(op[key]))] = int(rng.choice([-2, -1, len(tensors), rng.integers(len(tensors))]))
            if rng.random() < 0.2:
                op[key].append(int(rng.integers(-1, len(tensors))))
        elif r < 0.65:  # a tensor's dims
            t = tensors[rng.integers(len(tensors))]
            dims = t[2]
            c = rng.random()
            if c < 0.5 and len(dims) > 2:
                dims[int(rng.integers(2, len(dims)))] = int(rng.choice([0, -1, -3, 1, 2 ** 31 - 1, 2 ** 40, 2 ** 62]))
            elif c < 0.7:
                dims.insert(int(rng.integers(len(dims) + 1)), int(rng.choice([-1, -2, 2, 2 ** 31 - 1])))
            elif c < 0.85 and dims:
                del dims[rng.integers(len(dims))]
            else:
                t[1] = ["float32", "float16", "int32", "int64", "float8_e4m3fn"][rng.integers(5)]
        elif r < 0.85:  # a weight array reshaped, emptied, retyped, or not contiguous
            i = int(rng.integers(len(weights)))
            name, a = weights[i]
            c = rng.random()
            if c < 0.25:
                a = a.reshape(-1)
            elif c < 0.4:
                a = a.reshape((1,) + a.shape)
            elif c < 0.6:
                a = a[:0] if a.ndim else a
            elif c < 0.7 and a.ndim > 1:
                a = a[:, :0]
            elif c < 0.85:
                a = a.astype([np.float32, np.float16, np.int32, np.float64][rng.integers(4)])
            elif a.ndim > 1:
                a = a.T  # not C-contiguous
            weights[i] = (name, a)
        elif r < 0.93:
            key = ["batch_max", "seq_max"][rng.integers(2)]
            desc[key] = int(rng.choice([0, -1, 1, 2 ** 30 + 1, 2 ** 31 - 1, 2 ** 31, 2 ** 62]))
        else:
            key = ["inputs", "outputs"][rng.integers(2)]
            desc[key] = [int(rng.choice([-1, len(tensors), rng.integers(len(tensors))]))
                         for _ in range(rng.integers(0, 3))]
    desc["weights"] = weights
    return desc


def engine_in_child(desc: dict) -> str:
    """_C.Engine on `desc` in a forked child (in this process where there is no fork): its outcome as a string, or
    "CRASH signal N" / "CRASH exit N" when the child died inside the extension."""
    from trtrun.errors import DeviceError, InputError, ShapeError

    Engine = native_engine()
    args = (desc["tensors"], desc["ops"], desc["weights"], desc["inputs"], desc["outputs"], desc["batch_max"],
            desc["seq_max"], desc["tf32"], 0)

    def outcome() -> str:
        try:
            Engine(*args)
            return "engine description: built"
        except (InputError, ShapeError):
            return "engine description: refused"
        except DeviceError:
            return "engine description: passed (DeviceError)"
        except Exception as e:  # noqa: BLE001 - anything else is a finding: what the binding lets through
            return f"CRASH {type(e).__name__}: {str(e)[:200]}"

    if not hasattr(os, "fork"):
        return outcome()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into the fuzzer
        code = 0
        try:
            os.close(r)
            os.write(w, outcome().encode()[:4000])
        except BaseException:  # noqa: BLE001
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    try:
        while True:
            b = os.read(r, 4096)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"CRASH signal {os.WTERMSIG(status)}"
    if os.WEXITSTATUS(status) != 0:
        return f"CRASH exit {os.WEXITSTATUS(status)}"
    return b"".join(chunks).decode()


def execute_engine(path: Path, data: bytes) -> str:
    """An `engine` mutant: the seed plan it carries, lowered, its description edited (mutate_description with its
    seed) and handed to the Engine in a child. Raises on a crash."""
    from trtrun.errors import PlanError
    from trtrun.plan import load_plan
    from trtrun.runtime.lower import lower_plan

    if native_engine() is None:
        return "engine description: skipped (no extension)"
    plan_bytes, seed = data[len(ENGINE_MAGIC):-8], int.from_bytes(data[-8:], "little")
    _overwrite(path, plan_bytes)
    try:
        low = lower_plan(load_plan(path))
    except PlanError:
        return "engine description: seed not lowerable"
    got = engine_in_child(mutate_description(low, np.random.default_rng(seed)))
    if got.startswith("CRASH"):
        raise EngineCrash(got)
    return got


class EngineCrash(Exception):
    """The Engine raised something other than trtrun's errors, or its child process died."""


_EXTENSION: list = []  # [trtrun._C or None], looked up once


def native_engine():
    """trtrun._C.Engine, or None where the extension is not built or cannot load (the Engine stage is then skipped)."""
    if not _EXTENSION:
        try:
            from trtrun.runtime.extension import load_extension

            _EXTENSION.append(load_extension().Engine)
        except Exception:  # noqa: BLE001 - RuntimeUnavailableError and whatever a broken build raises
            _EXTENSION.append(None)
    return _EXTENSION[0]


def engine_check(low: dict) -> str:
    """The native Engine on a lowered plan: ", engine ok" when its description checks pass (a DeviceError follows on a
    machine without a GPU; with one the Engine is built), ", engine refused" for their InputError/ShapeError."""
    from trtrun.errors import DeviceError, InputError, ShapeError

    Engine = native_engine()
    if Engine is None:
        return ""
    try:
        Engine(low["tensors"], low["ops"], low["weights"], low["inputs"], low["outputs"], low["batch_max"],
               low["seq_max"], low["tf32"], 0)
    except (InputError, ShapeError):
        return ", engine refused"
    except DeviceError:
        pass
    return ", engine ok"


def execute(path: Path, data: bytes) -> str:
    """Write `data` to `path`, load it and, if it loads, run it. Returns the outcome; raises on a crash."""
    from trtrun.errors import InputError, PlanError
    from trtrun.plan import load_plan
    from trtrun.reference import ReferenceBackend
    from trtrun.runtime.lower import lower_plan

    if data.startswith(ENGINE_MAGIC):
        return execute_engine(path, data)
    _overwrite(path, data)
    try:
        plan = load_plan(path)
    except PlanError as e:
        return "PlanError " + _stage(str(e), str(path))
    # what else reads a loaded header: `trtrun inspect`, the GPU runtime's lowering (pure Python) and the Engine's
    # description checks (native)
    plan.summary()
    plan.to_dict()
    lowered = ""
    try:
        lowered = engine_check(lower_plan(plan))
    except PlanError:  # an op the GPU runtime does not run (a valid plan may hold one)
        lowered = ", not lowerable"
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = ReferenceBackend(plan).run(tiny_feeds(plan))
        assert all(isinstance(v, np.ndarray) for v in out.values())
        return "loaded, ran" + lowered
    except InputError:
        return "loaded, run InputError" + lowered
    except PlanError:
        return "loaded, run PlanError" + lowered


def default_seeds() -> list[bytes]:
    """tests/handmade_plans.py's tiny plans, small enough that a run takes about a millisecond, with one head of 32
    (GPU_TINY): the GPU runtime's lowering refuses smaller heads, and mutants of lowerable seeds reach the rest of it."""
    sys.path.insert(0, str(REPO / "tests"))
    from handmade_plans import GPU_TINY, tiny_plan

    from trtrun.plan import Plan

    prof = {"batch": [1, 1, 2], "seq": [1, 4, 8]}
    N = GPU_TINY["hidden"]
    pooled = tiny_plan("fp32", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof, seed=3)
    hdr = json.loads(json.dumps({k: v for k, v in pooled.header.items() if k != "weights"}))
    hdr["ops"].append({"type": "Pool", "name": "pool", "inputs": ["last_hidden_state", "attention_mask"],
                       "outputs": ["pooled"], "weights": {}, "attrs": {"mode": "mean", "normalize": True},
                       "precision": "fp32"})
    hdr["tensors"]["pooled"] = {"dtype": "float32", "shape": ["B", N]}
    hdr["outputs"].append({"name": "pooled", "dtype": "float32", "shape": ["B", N]})
    plans = [tiny_plan("fp32", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof),
             Plan.from_parts(hdr, pooled.weights),
             tiny_plan("hybrid", "encoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof,
                       seed=1),
             tiny_plan("fp16", "decoder", **GPU_TINY, layers=1, vocab=16, max_pos=8, profile=prof,
                       seed=2)] + newer_seeds(prof)
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, p in enumerate(plans):
            out.append(p.save(Path(d) / f"seed{i}.plan").read_bytes())
    return out


def newer_seeds(prof: dict) -> list:
    """Plans with the newer fields, heads of 32 and K, N multiples of 16 so that they pass the Engine's checks too: an
    fp8 plan; a mixed one (fp8 with per-tensor and static scales, hybrid, fp32); a hybrid decoder with 2 query heads
    on 1 K/V head, a partial rotary, Qwen3's q/k norm and a window, without a position table; an fp32 encoder with a
    relative-position table and a window; an fp16 decoder with ALiBi slopes and no position table."""
    from handmade_plans import tiny_plan

    from trtrun.builder.quantize_fp8 import assign_precisions, linear_ops
    from trtrun.plan import Plan

    def parts(precision, arch, hidden=32, heads=1, seed=4):
        p = tiny_plan(precision, arch, hidden=hidden, heads=heads, layers=1, vocab=16, max_pos=8, inter=32,
                      profile=prof, seed=seed)
        return json.loads(json.dumps({k: v for k, v in p.header.items() if k != "weights"})), dict(p.weights)

    def fp8(choice_of, **kw):
        h, w = parts("hybrid", "encoder")
        w32 = parts("fp32", "encoder")[1]
        choice = {op["name"]: choice_of(i) for i, op in enumerate(linear_ops(h))}
        return Plan.from_parts(*assign_precisions(h, w, w32, choice, **kw))

    rng = np.random.default_rng(5)
    out = [fp8(lambda i: "fp8"),
           fp8(lambda i: ("fp8", "hybrid", "fp32")[i % 3], weight_scale="tensor",
               x_amax={"l0.qkv": 3.0, "l0.fc2": 2.0})]

    def no_position(h, w):
        del next(o for o in h["ops"] if o["type"] == "Embedding")["weights"]["position"], w["emb.position"]
        h["model"]["max_position"] = 2 ** 31 - 1

    h, w = parts("hybrid", "decoder", hidden=64, heads=2)  # 2 query heads of 32 on 1 K/V head
    no_position(h, w)
    att = next(o for o in h["ops"] if o["type"] == "Attention")
    att["attrs"].update(num_kv_heads=1, rotary_dim=16, qk_norm_epsilon=1e-6, window=2)
    att["weights"].update(inv_freq="inv_freq", q_norm="q_norm", k_norm="k_norm")
    w.update(inv_freq=(1.0 / 10000 ** (np.arange(0, 16, 2) / 16)).astype(np.float32),
             q_norm=rng.uniform(0.5, 1.5, 32).astype(np.float32), k_norm=rng.uniform(0.5, 1.5, 32).astype(np.float32))
    w["l0.qkv.weight"], w["l0.qkv.bias"] = w["l0.qkv.weight"][:, :128], w["l0.qkv.bias"][:128]
    h["tensors"]["l0.qkv_out"]["shape"][2] = 128
    out.append(Plan.from_parts(h, w))

    h, w = parts("fp32", "encoder")
    att = next(o for o in h["ops"] if o["type"] == "Attention")
    att["attrs"].update(relative_max_distance=8, relative_bidirectional=True, window=3)
    att["weights"]["relative_bias"] = "relative_bias"
    w["relative_bias"] = rng.normal(0, 1, (8, 1)).astype(np.float32)
    out.append(Plan.from_parts(h, w))

    h, w = parts("fp16", "decoder")
    no_position(h, w)
    att = next(o for o in h["ops"] if o["type"] == "Attention")
    att["weights"]["alibi_slopes"] = "alibi_slopes"
    w["alibi_slopes"] = np.array([0.25], np.float32)
    out.append(Plan.from_parts(h, w))
    return out


def fuzz(seeds: list[bytes], *, execs: int, seed, time_budget: float | None = None, crashes: Path | None = None,
         exec_timeout: float = 10.0, progress_every: float = 0.0, label: str = "", workdir: Path | None = None,
         out=sys.stdout) -> dict:
    """Run up to `execs` executions (or until `time_budget` seconds). Returns a summary dict:
    {"execs", "seconds", "outcomes": Counter, "kinds": Counter, "crashes": [paths], "hangs": [paths],
     "peak_rss_kb"}."""
    rng = np.random.default_rng(seed)
    mut = Mutator(seeds)
    outcomes: Counter = Counter()
    kinds: Counter = Counter()
    bad: dict[str, list] = {"crashes": [], "hangs": []}
    own_dir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-plan-")) if own_dir else workdir
    path = workdir / "input.plan"
    use_alarm = exec_timeout > 0 and hasattr(signal, "setitimer")
    old = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    t0 = last = time.perf_counter()
    n = 0
    try:
        while n < execs and (time_budget is None or time.perf_counter() - t0 < time_budget):
            n += 1
            try:
                kind, data = mut.mutate(rng)
            except Exception:  # noqa: BLE001 - a bug of the fuzzer itself: say so, keep a long run going
                outcomes["FUZZER ERROR (mutation)"] += 1
                print(f"{label}fuzzer error at execution {n}:\n{traceback.format_exc()[-2000:]}", file=out, flush=True)
                continue
            kinds[kind] += 1
            try:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, exec_timeout)
                try:
                    outcomes[execute(path, data)] += 1
                finally:
                    if use_alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except (Hang, Exception) as e:  # noqa: BLE001 - every unexpected exception is a finding
                what = "hang" if isinstance(e, Hang) else type(e).__name__
                outcomes[f"CRASH {what}"] += 1
                saved = None
                if crashes is not None:
                    crashes.mkdir(parents=True, exist_ok=True)
                    saved = crashes / f"{what}-{hashlib.sha256(data).hexdigest()[:16]}.plan"
                    saved.write_bytes(data)
                bad["hangs" if what == "hang" else "crashes"].append(str(saved))
                print(f"{label}CRASH ({what}) at execution {n} ({kind} mutation): "
                      f"{'saved ' + str(saved) if saved else 'not saved (no --crashes)'}", file=out, flush=True)
                if what != "hang":
                    print("".join(traceback.format_exception(type(e), e, e.__traceback__))[-3000:], file=out,
                          flush=True)
            now = time.perf_counter()
            if progress_every and now - last >= progress_every:
                last = now
                print(f"{label}{n} execs, {n / (now - t0):.0f}/s, crashes {len(bad['crashes'])}, "
                      f"hangs {len(bad['hangs'])}", file=out, flush=True)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old)
        if own_dir:
            for f in workdir.iterdir():
                f.unlink()
            workdir.rmdir()
    return {"execs": n, "seconds": time.perf_counter() - t0, "outcomes": outcomes, "kinds": kinds,
            "crashes": bad["crashes"], "hangs": bad["hangs"],
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def _worker(args):
    i, seeds, opts = args
    return fuzz(seeds, execs=opts["execs"], seed=[opts["seed"], i], time_budget=opts["time"],
                crashes=opts["crashes"], exec_timeout=opts["exec_timeout"], progress_every=opts["progress"],
                label=f"[worker {i}] " if opts["jobs"] > 1 else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--execs", type=int, default=100_000, help="executions in all (split over --jobs)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (worker i uses [seed, i])")
    ap.add_argument("--time", type=float, default=None, metavar="SECONDS",
                    help="stop each worker after this many seconds even if --execs are not done")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (each its own seed stream)")
    ap.add_argument("--crashes", type=Path, default=Path("fuzz-crashes"),
                    help="folder for inputs that crash or hang (default ./fuzz-crashes)")
    ap.add_argument("--exec-timeout", type=float, default=10.0, help="seconds before an execution is a hang")
    ap.add_argument("--progress", type=float, default=30.0, help="seconds between progress lines (0: none)")
    ap.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                    help="address-space limit of each worker (RLIMIT_AS), so that a runaway allocation is a MemoryError "
                         "(a finding) rather than the machine's OOM killer; not with a GPU (CUDA reserves more)")
    ap.add_argument("--plan", type=Path, action="append", default=[],
                    help="a seed plan file (repeatable); default: tests/handmade_plans.py's tiny plans")
    a = ap.parse_args(argv)
    seeds = [p.read_bytes() for p in a.plan] or default_seeds()
    if a.max_memory:
        limit = int(a.max_memory * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    jobs = max(1, a.jobs)
    per = [a.execs // jobs + (1 if i < a.execs % jobs else 0) for i in range(jobs)]
    opts = {"seed": a.seed, "time": a.time, "crashes": a.crashes, "exec_timeout": a.exec_timeout,
            "progress": a.progress, "jobs": jobs}
    engine = "the Engine's description checks" if native_engine() else "no Engine (the extension is not built)"
    print(f"fuzzing trtrun.plan.load_plan + lower_plan + {engine} + ReferenceBackend.run: {a.execs} executions over "
          f"{jobs} process(es), seed {a.seed}, {len(seeds)} seed plan(s), per-execution timeout {a.exec_timeout} s",
          flush=True)
    t0 = time.perf_counter()
    if jobs == 1:
        results = [_worker((0, seeds, dict(opts, execs=per[0])))]
    else:
        import multiprocessing as mp
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(jobs) as pool:
            results = pool.map(_worker, [(i, seeds, dict(opts, execs=per[i])) for i in range(jobs)])
    wall = time.perf_counter() - t0
    total = sum(r["execs"] for r in results)
    outcomes = sum((r["outcomes"] for r in results), Counter())
    kinds = sum((r["kinds"] for r in results), Counter())
    crashes = [c for r in results for c in r["crashes"]]
    hangs = [c for r in results for c in r["hangs"]]
    print(f"\n{total} executions in {wall:.1f} s: {total / wall:.0f}/s over {jobs} process(es)")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    print("outcomes:")
    for k, v in sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {v:>9}  {k}")
    print("peak RSS per process: " + ", ".join(f"{r['peak_rss_kb'] / 1024:.0f} MiB" for r in results))
    print(f"crashes: {len(crashes)}, hangs: {len(hangs)}")
    for c in crashes + hangs:
        print(f"  {c}")
    return 1 if crashes or hangs or any(k.startswith("FUZZER ERROR") for k in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
