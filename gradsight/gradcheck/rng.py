"""A forked, seeded RNG so that every evaluation of ``fn`` sees the same random draws.

Finite differences subtract two evaluations of ``fn``; dropout that draws a new mask
each time would turn that difference into noise. Each evaluation therefore restarts
from one saved state of the global generators, forked so that the user's RNG state
is exactly as it was once the check returns.
"""

from __future__ import annotations

import torch


class ForkedRNG:
    """Context manager: fork the global RNG (CPU and the CUDA devices in use), seed it.

    ``reset()`` puts the forked generators back to the seeded state; call it before
    every evaluation of the function under test.
    """

    def __init__(self, seed: int, cuda_devices: list[int] | None = None) -> None:
        self.seed = int(seed)
        self.cuda_devices = sorted(set(cuda_devices or []))
        self._fork = None
        self._cpu_state: torch.Tensor | None = None
        self._cuda_states: list[torch.Tensor] = []

    def __enter__(self) -> ForkedRNG:
        # Name the devices explicitly: fork_rng would otherwise touch (and warn about) all of them.
        self._fork = torch.random.fork_rng(devices=self.cuda_devices)
        self._fork.__enter__()
        torch.default_generator.manual_seed(self.seed)
        self._cpu_state = torch.get_rng_state()
        for d in self.cuda_devices:
            torch.cuda.default_generators[d].manual_seed(self.seed)
        self._cuda_states = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        return self

    def reset(self) -> None:
        torch.set_rng_state(self._cpu_state)
        for d, state in zip(self.cuda_devices, self._cuda_states, strict=True):
            torch.cuda.set_rng_state(state, d)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None
