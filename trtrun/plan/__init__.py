"""The trtrun plan: an in-memory `Plan` (header dict + weights), its file format, and its validation.

docs/plan-format.md is the contract this package implements:

    format.py    the file layout, the loader's limits, dtypes, op schemas and attributes, what the GPU runtime runs
    io.py        writing a plan file and reading one back (preamble, file checks, checksum, JSON depth scan)
    validate.py  the header's and each op's validation (PlanError naming the field)
    summary.py   what `trtrun inspect` prints
    plan.py      the Plan class (accessors, from_parts, save, check_feeds) and load_plan
"""

from __future__ import annotations

from ..errors import InputError, PlanError, ShapeError
from .format import (
    ACTIVATIONS,
    ALIGN,
    DTYPES,
    FLOAT_DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INPUT_NAMES,
    INT_DTYPES,
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_JSON_DEPTH,
    OP_SCHEMAS,
    OP_TYPES,
    POOL_MODES,
)
from .plan import Plan, load_plan

__all__ = ["Plan", "load_plan", "PlanError", "InputError", "ShapeError", "ACTIVATIONS", "ALIGN", "DTYPES",
           "FLOAT_DTYPES", "FORMAT_NAME", "FORMAT_VERSION", "INPUT_NAMES", "INT_DTYPES", "MAGIC", "MAX_HEADER_BYTES",
           "MAX_JSON_DEPTH", "OP_SCHEMAS", "OP_TYPES", "POOL_MODES"]
