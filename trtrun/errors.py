"""trtrun's exception classes: one hierarchy, so callers can catch `TrtrunError`.

Errors that are about the caller's arguments also derive from ValueError (bad shapes, dtypes,
token ids), so generic code that catches ValueError keeps working.
"""


class TrtrunError(Exception):
    """Base class of every error trtrun raises on purpose."""


class ModelError(TrtrunError):
    """The ONNX model cannot be read or is malformed (file, field)."""


class UnsupportedOpError(ModelError):
    """The builder met an op (type + node name) it cannot lower."""

    def __init__(self, op_type: str, node_name: str, why: str = ""):
        self.op_type = op_type
        self.node_name = node_name
        msg = f"unsupported op {op_type!r} at node {node_name!r}"
        if why:
            msg += f": {why}"
        super().__init__(msg)


class BuildError(TrtrunError):
    """A graph pass could not do its job (pattern not understood, inconsistent shapes)."""


class PlanError(TrtrunError):
    """A plan file is truncated, corrupted, foreign, from a future version, or fails validation."""


class InputError(TrtrunError, ValueError):
    """Inputs given to run(): missing/unknown names, wrong dtype or rank, token id out of range."""


class ShapeError(InputError):
    """An input shape is outside the plan's optimization profile."""


class RuntimeUnavailableError(TrtrunError):
    """The GPU runtime is not built or no GPU is visible; the message says why."""


class DeviceError(TrtrunError):
    """A CUDA/cuBLAS failure or out-of-memory on the device; the engine stays usable."""
