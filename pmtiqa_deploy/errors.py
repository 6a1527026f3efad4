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
