"""The one exception every guard of the EMR run raises (placement, cost, settings)."""


class GuardRefused(Exception):
    """A guard refused the run; ``str()`` is the one-line reason shown in the task log."""
