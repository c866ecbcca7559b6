"""Step records (numpy) and bounded history: what detectors and views read."""

from .step_record import StepRecord

__all__ = ["StepRecord"]
