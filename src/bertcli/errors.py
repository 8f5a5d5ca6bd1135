"""The one exception type the CLI turns into a single line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input a user can fix: a missing file, a wrong flag value, a mismatched checkpoint.

    The message is shown as-is, so it should name the flag, file or field at fault.
    """
