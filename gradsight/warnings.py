"""gradsight's own warning category, so users can filter it:
``warnings.filterwarnings("ignore", category=gs.GradsightWarning)``."""


class GradsightWarning(UserWarning):
    """A serious finding during training, or a capture limitation worth knowing about."""
