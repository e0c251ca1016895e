"""Errors about the user's input (files, sheets, config), reported without a traceback."""


class InputError(ValueError):
    """Bad input: the message names the file (or sheet, or key) and the problem."""
