"""The raw summary fields of one tensor: the row layout ``kernel_hooks.summary`` writes and
``records.metrics`` and the detectors read.

"sum"-like fields add when rows combine (several calls or backward passes in one step);
``min``/``max`` take the extremum.
"""

FIELDS = ("sum", "sumsq", "min", "max", "nonzero", "nan", "posinf", "neginf")
N_FIELDS = len(FIELDS)
F = {name: i for i, name in enumerate(FIELDS)}
