"""gradsight's own warning category, so users can filter it:
``warnings.filterwarnings("ignore", category=gs.GradsightWarning)``."""

import os
import sys


class GradsightWarning(UserWarning):
    """A serious finding during training, or a capture limitation worth knowing about."""


def user_stacklevel() -> int:
    """Point a warning at the user's line, not at torch's or gradsight's internals (with
    ``optimizer=`` the step closes inside torch's optimizer hook)."""
    import torch

    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level
