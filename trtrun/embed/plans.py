"""Plans for ONNX files the Embedder is given: built once with the asked precision and profile, and cached
beside the file as <stem>.<precision>.plan (or in the temp folder where that folder is not writable); reused
while the ONNX file's SHA-256 matches."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import TrtrunError


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plan_for_onnx(onnx_path: Path, precision: str, profile: dict | None, progress):
    """Build (or reuse a cached) plan for an ONNX file -> (plan, plan path)."""
    from ..plan import load_plan

    sha = _sha256(onnx_path)
    beside = onnx_path.with_name(f"{onnx_path.stem}.{precision}.plan")
    in_tmp = Path(tempfile.gettempdir()) / "trtrun-plans" / f"{onnx_path.stem}-{sha[:16]}.{precision}.plan"

    def cached(p: Path):
        """The plan in `p` if it was built from this ONNX file with this precision and profile, else None."""
        if not p.is_file():
            return None
        try:
            plan = load_plan(p)
        except TrtrunError:
            return None
        if (plan.header.get("source") or {}).get("sha256") != sha or plan.precision != precision:
            return None
        if profile is not None:
            want = {k: [int(x) for x in v] for k, v in profile.items()}
            if any(list(plan.profile.get(k, [])) != v for k, v in want.items()):
                return None
        return plan

    for cand in (beside, in_tmp):
        plan = cached(cand)
        if plan is not None:
            return plan, cand
    from ..builder import build

    plan = build(onnx_path, precision=precision, profile=profile, progress=progress)
    target = in_tmp
    if not beside.exists() and os.access(beside.parent, os.W_OK):
        target = beside
    target.parent.mkdir(parents=True, exist_ok=True)
    plan.save(target)  # atomic: concurrent builders each rename a complete file into place; sets plan.path
    return plan, target
