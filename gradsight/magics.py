"""``%load_ext gradsight`` then ``%gradsight``: the watchers in this kernel and their latest findings.

``%gradsight`` prints one block per live watcher (name, steps, watched layers, settings that
change training) with its most recent findings; ``%gradsight NAME`` shows only that watcher
and up to 20 findings. Plain text, so it reads the same in a notebook and a terminal IPython.
"""

from __future__ import annotations

from . import bus


def status(arg: str = "") -> str:
    """The text ``%gradsight [name]`` prints."""
    watchers = bus.active_watchers()
    name = arg.strip()
    if name:
        picked = [w for w in watchers if w.name == name]
        if not picked:
            known = ", ".join(repr(w.name) for w in watchers) or "none"
            return f"gradsight: no live watcher named {name!r}; live watchers: {known}."
        watchers = picked
    if not watchers:
        return "gradsight: no live watchers in this kernel. Start one with w = gs.watch(model, optimizer=opt)."
    limit = 20 if name else 3
    blocks = []
    for w in watchers:
        extra = [f"on_nonfinite={w.on_nonfinite!r}"] if getattr(w, "on_nonfinite", "warn") != "warn" else []
        head = (f"{w.name}: {w.step_count} steps, {len(w.layer_names)} layers watched"
                + (f" ({', '.join(extra)})" if extra else ""))
        f = w.findings()
        if f.empty:
            lines = ["  no findings"]
        else:
            last = f.sort_values("step", kind="stable").tail(limit)
            lines = [f"  step {int(r.step)}  {r.severity:<7} {r.kind} at {r.layer or '(whole model)'!s}: {r.message}"
                     for r in last.itertuples()]
            if len(f) > limit:
                lines.insert(0, f"  {len(f)} findings; the latest {limit}:")
        blocks.append("\n".join([head, *lines]))
    return "\n".join(blocks)


def register(ipython) -> None:
    """Register the ``%gradsight`` line magic in ``ipython``."""

    def gradsight_magic(line: str = "") -> None:
        print(status(line))

    ipython.register_magic_function(gradsight_magic, magic_kind="line", magic_name="gradsight")
