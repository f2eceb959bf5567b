"""The one exception type for mistakes a user can fix (bad file, key, value).

The CLI prints it as a single line on stderr and exits with code 2; anything else is a bug
or a fault of the machine and exits with code 1.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file/line, key or value at fault."""
