"""Checks of single values a user gives: finite numbers, seeds and image sizes.

`ada train` applies them to its declared options (`ada.config_checks.validate`), the tools around a
trained model to their own flags, so every command refuses the same values in the same words:
one `UserError` line naming the flag and the value.
"""

from __future__ import annotations

import math

from ada.errors import UserError

# numpy's RandomState, which turns a seed into z as the official tools do, takes 0..2**32 - 1;
# torch's manual_seed takes more, and gets the same seeds.
MAX_SEED = 2**32 - 1


def is_supported_resolution(side: int) -> bool:
    """Whether the networks build for images of this side length: a power of two in 4..1024."""
    return 4 <= side <= 1024 and side & (side - 1) == 0


def is_finite(value: int | float) -> bool:
    """Whether a number is a finite float: not inf or nan, and not an int beyond the float range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_finite(name: str, value: float, hint: str = "") -> None:
    """Refuse inf and nan (a truncation, rate or length at nan renders black images or trains on
    nothing); `hint`, such as " (1 means no truncation)", ends the message."""
    if not is_finite(value):
        raise UserError(f"{name}={value} must be a finite number{hint}")


def check_seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise UserError(f"{name}={value} must be in 0..{MAX_SEED}")
