"""Exception types. Each message says what went wrong and what to do about it."""


class PmtIqaError(Exception):
    """Base class of every error this toolkit raises on purpose."""


class SpecError(PmtIqaError):
    """The spec file (model.json) is missing, malformed, of a newer schema, or disagrees
    with the model file beside it."""


class CheckpointError(PmtIqaError):
    """A checkpoint is missing, truncated, or does not match its config."""


class DecodeError(PmtIqaError):
    """An image file could not be read or is unusable (empty, truncated, too small)."""


class InputError(PmtIqaError):
    """An array handed to a backend does not match the spec's input."""


class BackendUnavailable(PmtIqaError):
    """A backend's library or device is missing; the message names the extra to install."""


class DeviceError(PmtIqaError):
    """A CUDA call failed on a machine that has a GPU (out of memory, launch failure...)."""


class DatasetError(PmtIqaError):
    """A dataset folder lacks a file its format needs, or a file is not as expected."""


class ExportError(PmtIqaError):
    """An export step failed; nothing half-written is left behind."""


class ParityError(ExportError):
    """An exported artifact disagrees with PyTorch beyond its tolerance."""


class ServerError(PmtIqaError):
    """An inference server could not be started or reached, or failed a request."""


class OutputError(PmtIqaError):
    """The output cannot be written (disk full, read-only, no permission, I/O error). The
    message is one line: the path, the cause, and where the rows so far are kept."""

    def __init__(self, path: str, cause: str, kept: str | None = None):
        self.path, self.cause, self.kept = path, cause, kept
        message = f"cannot write {path} ({cause})"
        if kept is not None:
            where = "there" if kept == path else f"in {kept}"
            message += f"; the rows so far are kept {where}: rerun with --resume once this is fixed"
        super().__init__(message)


class OutputRefused(PmtIqaError):
    """Writing the output would destroy something: it exists, it is one of the inputs,
    or another run is writing it. Nothing was written."""
