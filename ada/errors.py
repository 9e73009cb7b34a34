"""The one exception type that means "the user asked for something we cannot do".

The command line turns it into a single line on stderr and a non-zero exit, without a
traceback. Raise it with a message that names the problem and what to do about it.
Programming errors stay ordinary exceptions, so their tracebacks reach us.
"""


class UserError(Exception):
    """A mistake in the user's input: a flag value, a path, a dataset, a checkpoint."""
