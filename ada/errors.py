"""The one exception type that means "the user asked for something we cannot do".

The command line turns it into a single line on stderr and a non-zero exit, without a
traceback. Raise it with a message that names the problem and what to do about it.
Programming errors stay ordinary exceptions, so their tracebacks reach us.
"""


class UserError(Exception):
    """A mistake in the user's input: a flag value, a path, a dataset, a checkpoint."""


def one_line(exc: BaseException, form: str = "line") -> str:
    """An exception's message as one line of ours: its first "line" or first "sentence", or its
    "whole" message folded onto one line (wandb's and JSON's span several); its type's name where it
    says nothing."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    if form == "whole":
        return " ".join(text.split())
    first = text.splitlines()[0]
    return first.split(". ")[0] if form == "sentence" else first
