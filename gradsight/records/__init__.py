"""The data types (step records, summary fields, histograms) and the run's history: the
bottom layer, pure numpy. Everything above reads these; they import nothing of gradsight's."""

from .histogram import HIST_KINDS, Histogram
from .queries import RunQueries
from .run_history import RunHistory
from .step_record import StepRecord

__all__ = ["StepRecord", "Histogram", "HIST_KINDS", "RunHistory", "RunQueries"]
