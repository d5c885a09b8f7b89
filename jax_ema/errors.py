"""The one exception type the CLIs turn into a single line and exit code 2."""


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""
