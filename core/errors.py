"""The few exceptions prunectl's library raises for problems a user can fix.

Every message says what was wrong and ends with what was received. The CLI turns
each of them into a one-line ``Error: ...`` and exit code 1 (see ``cli/main.py``).
"""


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (libraries such as h5py write several), or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def shown_names(names, limit: int) -> str:
    """``names`` joined for an error message: the first ``limit``, then how many more (``none`` for none).

    Example:
        >>> shown_names([f"d{i}" for i in range(23)], limit=2)
        'd0, d1 and 21 more'
    """
    names = [str(n) for n in names]
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "") or "none"


class PrunectlError(Exception):
    """Base class: a problem with the user's input, reported as one line."""


class ModelFileError(PrunectlError):
    """A model file is missing, unreadable, or not a saved Keras model."""


class InvalidModelError(ModelFileError):
    """A model file is damaged, crafted, or disagrees with itself: the input's fault, not prunectl's.

    The message reads ``<file> is not a valid Keras model: <what>``, where ``what``
    names the member, dataset or layer at fault and what was found there.

    Example:
        >>> InvalidModelError("m.h5", "dataset /model_weights/d/kernel is stored in an external file")
    """

    def __init__(self, path, what: str):
        self.path = str(path)
        self.what = what
        super().__init__(f"{self.path} is not a valid Keras model: {what}")


class UnsafeModelError(PrunectlError):
    """Loading the model would run Python code stored in the file."""


class OptionError(PrunectlError):
    """An option value is out of range or conflicts with another option.

    The message may name options as ``{field}`` placeholders, where each field is
    listed in ``fields``: the library shows them as the field names
    (``neuron_ratio``), the CLI as its flags (``--neuron-ratio``), through
    :meth:`render`, so a rule is written once for both.

    Example:
        >>> OptionError("give only one of {val_data} and {val_split}.", "val_data", "val_split")
    """

    def __init__(self, message: str, *fields: str):
        self.template = message
        self.fields = fields
        super().__init__(self.render(lambda field: field))

    def render(self, name) -> str:
        """The message with each ``{field}`` shown as ``name(field)``."""
        out = self.template
        for field in self.fields:
            out = out.replace("{" + field + "}", name(field))
        return out


class SelectionError(PrunectlError):
    """A layer pattern selects no layer, or nothing is left to prune."""


class OutputError(PrunectlError):
    """An output path cannot be written safely."""


class ReportError(PrunectlError):
    """A file given as a report is not a prunectl JSON report."""


class DataError(PrunectlError):
    """A data file is missing, unreadable, or does not fit the model."""


class SetupError(PrunectlError):
    """This installation or environment lacks what a requested feature needs."""


class ClusterError(PrunectlError):
    """The workers of a multi-worker run could not start together, or lost contact while training."""


class ExportError(PrunectlError):
    """A converter cannot turn the model into the requested deployment format, or its result disagrees with Keras."""


class StructureError(PrunectlError):
    """A model's layer graph cannot be pruned structurally."""


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM): raised like KeyboardInterrupt so every temporary file is removed.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it.
    The library never installs the signal handler that raises it; the CLI does.
    """

    def __init__(self, signum: int = 15):
        self.signum = signum
        super().__init__(f"terminated by signal {signum}")
