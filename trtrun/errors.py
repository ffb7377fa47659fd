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


class ModelTooLargeError(InputError):
    """A named architecture refused for the size of its random fp32 weights (trtrun.export.check_size).
    `size` says what was refused; the message adds how to shrink or allow it: with the options of the `trtrun`
    command that was run where one is named (`command`, e.g. "trtrun check"; for_command), else in both the
    command line's and Python's terms."""

    def __init__(self, size: str, command: str | None = None):
        self.size = size
        self.command = command
        if command:
            how = (f"shrink the shape ({command} --hidden-size, --layers, --intermediate-size, --vocab-size) or "
                   f"allow it ({command} --allow-large)")
        else:
            how = ("shrink the shape (--hidden-size, --layers, --intermediate-size, --vocab-size; overrides= in "
                   "Python) or allow it (--allow-large; allow_large=True)")
        super().__init__(f"{size}: {how}")

    def for_command(self, command: str) -> "ModelTooLargeError":
        """The same refusal, its advice in the options of `command`."""
        return ModelTooLargeError(self.size, command)
