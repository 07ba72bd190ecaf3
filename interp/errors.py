"""interp's error type: every bad input raises it with a message that says what to do."""


class InterpError(ValueError):
    """Bad input or an inconsistent state, with a message that names the fix."""
