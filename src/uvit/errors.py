"""The one base class of every error a user can cause (a setting, an input file, a command-line value).

`uvit` prints such an error as one line, `error: <file or key>: <what was expected>; <the fix>`, and exits
non-zero; anything else is a bug and names the stage (the traceback with `uvit --debug`).
"""


class UserError(Exception):
    """Bad input: the message names the file or key, what was expected and how to fix it."""
