"""One exception type for every user-facing problem.

A ``LocasError`` carries a one-line message that names the problem and the fix; the CLI prints
it as ``error: ...`` and exits with status 2 instead of showing a traceback.

    >>> raise LocasError("memory file 'x.locas' not found; check the path")
"""


class LocasError(Exception):
    """A user-facing error with a one-line, actionable message."""


class UnsupportedArchitectureError(LocasError):
    """The model's ``config.model_type`` has no entry in the architecture registry."""


class MemoryFileError(LocasError):
    """A memory file is missing, corrupt, or was made for another model."""


class LocasWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as ``note: ...``)."""
