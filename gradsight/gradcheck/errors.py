"""The one error type the checker raises for bad input or an uncheckable function."""


class GradcheckError(ValueError):
    """A gradient check could not run as asked.

    The message says what was received, what was expected and what to do. A check that
    runs and finds a wrong gradient does not raise: it returns a failing report.
    """
