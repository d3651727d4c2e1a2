"""The error types that the library raises and the command line turns into exit statuses."""


class InputError(ValueError):
    """Something the user handed lmkit is wrong: the CLI prints the message on one line and exits 2.

    The message should say what is wrong and, where it helps, what to do about it.
    """
