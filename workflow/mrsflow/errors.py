"""Errors about the user's input (files, sheets, config), reported without a traceback."""


class InputError(ValueError):
    """Bad input: the message names the file (or sheet, or key) and the problem."""


class BackendError(RuntimeError):
    """A fitting program (LCModel, FSL-MRS) failed on one spectrum; the message is the
    program's own. That scan is then not fitted, excluded with the message, and the run goes
    on (mrsflow.fit)."""
