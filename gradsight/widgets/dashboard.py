"""The live ipywidgets dashboard: ``w.dashboard()``.

Findings on top (choosing one selects its layer and step), then tabs: gradient flow,
histograms (layer, gradient/activation, step slider), layer × step heatmap, training
curves, dead units and gradcheck. Works in any front-end with ipywidgets 8.

Several models in one kernel (a GAN's generator and discriminator, a teacher and a student):
each is its own named watcher, and a *source* dropdown (shown when there is more than one)
lists the live watchers and the recordings open in this kernel by name (the names the
JupyterLab panel uses); choosing one redraws every view from it. ``gs.dashboard()`` opens on
the newest watcher. A source of a torch.distributed job (``world_size > 1``) adds a *rank*
dropdown, a line naming the rank that went wrong first, and a "Ranks" tab with per-rank step
times (:mod:`.rank_times`). The rank chosen there is the one the layer views (gradient flow,
histograms, heatmap, dead units) show when the source holds its layer statistics — a recording
of the job holds every rank's; a live watcher only its own rank's (and every rank's step times
and findings), and then a line says whose layers are shown. Layers are flagged by the findings
of the rank shown (and those of no single rank).

Live: while displayed, the dashboard subscribes to the watcher's steps
(:func:`gradsight.bus.subscribe`) and redraws the visible tab from
inside ``step()`` — at most every ``min_interval`` seconds (0.5 s: about 2 redraws a
second), and further apart when a redraw is slow, so the view never takes more than
about a quarter of the training time. Each view is a PNG in an ``Image`` widget whose
bytes are replaced in place: no flicker. A redraw skipped by the throttle happens when
the cell finishes. Nothing is subscribed until the dashboard is displayed, and
``close()``, clearing its output, or closing the watcher unsubscribes it: a dashboard
that is not shown costs nothing.
"""

from __future__ import annotations

import base64
import contextlib
import html
import time
import weakref

import ipywidgets as widgets
import numpy as np

from .. import bus
from ..detectors.finding import SEVERITY_RANK
from ..throttle import ThrottledSubscriber
from . import source, style
from .dead_units import dead_units
from .distribution import distribution
from .gradcheck_plot import gradcheck_figure
from .gradient_flow import gradient_flow
from .heatmap import heatmap
from .histogram import histogram
from .rank_times import first_bad_text, rank_times
from .training_curves import training_curves

TABS = ("Gradient flow", "Histograms", "Heatmap", "Training", "Dead units", "Gradcheck", "Ranks")
RANKS_TAB = TABS.index("Ranks")  # present only for a source with world_size > 1
MIN_INTERVAL = 0.5      # seconds between live redraws (≤ ~2 per second)
MAX_INTERVAL = 3.0       # ... but never further apart than this
MAX_RENDER_SHARE = 0.25  # slow redraws are spaced so that drawing stays under this share of the time
# a 1×1 transparent PNG: an undrawn tab shows nothing rather than a broken-image icon
_BLANK = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg==")
_IMG = {"width": "100%", "max_width": "1100px", "height": "auto"}


class Dashboard(widgets.VBox):
    """Live view of a :class:`~gradsight.Watcher` (or a Recording). Display it; train; watch it
    update. ``watcher=None``: the newest watcher of this kernel; the source dropdown switches."""

    def __init__(self, watcher=None, *, min_interval: float = MIN_INTERVAL, window: int = 50):
        if watcher is None:
            watcher = _newest_source()
        if not source.is_watcher(watcher):
            raise TypeError(f"gradsight: Dashboard(watcher) expects a Watcher from gs.watch(model); "
                            f"got {type(watcher).__name__}.")
        self.watcher = watcher  # the source shown now (the source dropdown changes it)
        self.min_interval = float(min_interval)
        self.window = int(window)  # steps of unit activity the dead-units tab shows
        self.redraws = 0           # number of live (throttled) redraws, for tests and curiosity
        self.render_seconds = 0.0  # time of the last redraw
        self.throttle = ThrottledSubscriber(self._show_step, min_interval=self.min_interval,
                                            max_interval=MAX_INTERVAL, max_share=MAX_RENDER_SHARE,
                                            clock=time.perf_counter)
        self._stale: set[int] = set(range(len(TABS)))
        self._unsubscribe = None
        self._ipython = None
        self._busy = False
        self._updating = False
        self._report = None
        self._findings = source.findings_frame(None)
        self._sources: dict[str, weakref.ref] = {}  # dropdown key -> source, never kept alive here
        self._displayed = False

        self.header = widgets.HTML()
        self.source_choice = widgets.Dropdown(description="source", layout=widgets.Layout(width="340px"))
        self.rank_choice = widgets.Dropdown(description="rank", layout=widgets.Layout(width="330px", display="none"))
        self.rank_note = widgets.HTML()
        self.layers_rank_note = widgets.HTML()  # whose layers the layer views show (a job's source)
        self.findings = widgets.Select(options=[("No findings yet.", -1)], rows=4,
                                       layout=widgets.Layout(width="100%"))
        self.findings.add_class("jp-gradsight-findings")
        names = watcher.layer_names
        self.layer = widgets.Dropdown(options=[(style.short_name(n, 48), n) for n in names],
                                      value=_default_layer(watcher), description="layer",
                                      layout=widgets.Layout(width="340px"))
        self.layer.add_class("jp-gradsight-layer")
        self.of = widgets.ToggleButtons(options=[("gradient", "grad"), ("activation", "activation")],
                                        value="grad", style={"button_width": "90px"})
        self.step = widgets.SelectionSlider(options=[("—", -1)], value=-1, description="step",
                                            continuous_update=False, layout=widgets.Layout(width="420px"))
        self.refresh_button = widgets.Button(description="Refresh", icon="refresh",
                                             layout=widgets.Layout(width="110px"))
        self.check_button = widgets.Button(description="Check gradient", icon="check",
                                           button_style="primary", layout=widgets.Layout(width="160px"))
        self.gradcheck_html = widgets.HTML()
        self.images = {name: widgets.Image(value=_BLANK, format="png", layout=widgets.Layout(**_IMG))
                       for name in ("flow", "hist", "dist", "heat", "curves", "dead", "gradcheck", "ranks")}
        self.ranks_html = widgets.HTML()
        self._pages = [
            self.images["flow"],
            widgets.VBox([widgets.HBox([self.layer, self.of]), self.step, self.images["hist"],
                          self.images["dist"]]),
            self.images["heat"],
            self.images["curves"],
            widgets.VBox([self.layer, self.images["dead"]]),
            widgets.VBox([widgets.HBox([self.layer, self.check_button]), self.gradcheck_html,
                          self.images["gradcheck"]]),
            widgets.VBox([self.images["ranks"], self.ranks_html]),
        ]
        self.tabs = widgets.Tab(children=self._pages[:RANKS_TAB], titles=TABS[:RANKS_TAB])
        # source and rank choosers: a row in the page only while it has something to choose
        self.choosers = widgets.HBox([self.source_choice, self.rank_choice,
                                      widgets.VBox([self.rank_note, self.layers_rank_note])])
        css = widgets.HTML("<style>.jp-gradsight-findings select{font-family:var(--jp-code-font-family,"
                           "monospace);font-size:12px}</style>", layout=widgets.Layout(display="none"))
        super().__init__([css, widgets.HBox([self.header, self.refresh_button],
                                       layout=widgets.Layout(justify_content="space-between")),
                          self.findings, self.tabs])
        self.add_class("jp-gradsight-dashboard")
        self._view_count = 0  # the front-end reports how many views exist (ipywidgets)

        self.findings.observe(self._on_finding, "value")
        self.layer.observe(self._on_layer, "value")
        self.of.observe(self._on_of, "value")
        self.step.observe(self._on_step, "value")
        self.tabs.observe(self._on_tab, "selected_index")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.check_button.on_click(lambda _: self.run_gradcheck())
        self.source_choice.observe(self._on_source, "value")
        self.rank_choice.observe(self._on_rank, "value")
        self.observe(self._on_views, "_view_count")
        self._update_sources()
        self._update_findings()
        self._update_ranks()
        self._update_header()
        self._update_steps()

    # --- life cycle ------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        """True while subscribed to the watcher's steps."""
        return self._unsubscribe is not None

    def attach(self) -> None:
        """Start live updates (called when the dashboard is displayed)."""
        self._displayed = True
        if self._unsubscribe is not None or getattr(self.watcher, "closed", False):
            return
        me = weakref.ref(self)

        def on_event(event, watcher, _me=me):
            dash = _me()
            if dash is None:
                unsubscribe()
                return
            dash._on_event(event, watcher)

        unsubscribe = bus.subscribe(on_event)
        self._unsubscribe = unsubscribe
        with contextlib.suppress(Exception):
            from IPython import get_ipython

            ip = get_ipython()
            if ip is not None:
                ip.events.register("post_run_cell", self._after_cell)
                self._ipython = ip

    def detach(self) -> None:
        """Stop live updates: no callback runs for this dashboard any more."""
        if getattr(self, "_unsubscribe", None) is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if getattr(self, "_ipython", None) is not None:
            with contextlib.suppress(ValueError):
                self._ipython.events.unregister("post_run_cell", self._after_cell)
            self._ipython = None

    def close(self) -> None:
        self.detach()
        if not hasattr(self, "images"):  # failed in __init__
            return super().close()
        for child in (self.header, self.findings, self.layer, self.of, self.step, self.refresh_button,
                      self.check_button, self.gradcheck_html, self.source_choice, self.rank_choice,
                      self.rank_note, self.layers_rank_note, self.ranks_html, self.choosers,
                      *self.choosers.children[2:], *self.images.values(), *self._pages):
            child.close()
        self.tabs.close()
        super().close()

    def _repr_mimebundle_(self, **kwargs):
        self.attach()
        self.refresh()
        return super()._repr_mimebundle_(**kwargs)

    def _on_views(self, change) -> None:
        old, new = change["old"] or 0, change["new"] or 0
        if new > 0:
            self.attach()
        elif old > 0 and new == 0:
            self.detach()  # the output that showed it was cleared or closed

    # --- live updates ----------------------------------------------------------------------
    def _on_event(self, event: str, watcher) -> None:
        if event in ("watch", "open", "close") and watcher is not self.watcher:
            self._update_sources()  # a watcher or recording came or went: the source list follows
            return
        if watcher is not self.watcher:
            return
        if event == "close":
            self.refresh()
            self.detach()
            return
        if event != "step":
            return
        self.throttle.step(watcher)

    def _show_step(self, watcher, fresh: bool) -> None:
        self.refresh(live=not fresh)

    def _after_cell(self, *_args) -> None:
        self.throttle.flush()  # the cell finished: a step the throttle held back is drawn now

    def refresh(self, *, live: bool = False) -> None:
        """Redraw the header, the findings and the visible tab (others redraw when shown)."""
        if self._busy:
            return
        self._busy = True
        t0 = time.perf_counter()
        try:
            self._stale = set(range(len(TABS)))
            self._update_sources()
            self._update_findings()
            self._update_ranks()
            self._update_header()
            self._update_steps()
            self._render(self.tabs.selected_index or 0)
        finally:
            self._busy = False
        self.render_seconds = time.perf_counter() - t0
        if live:
            self.redraws += 1
        else:
            self.throttle.shown_elsewhere()

    # --- rendering -------------------------------------------------------------------------
    def layer_source(self):
        """``(view, rank)``: what the layer views draw (the chosen rank's layers where the source
        holds them, see :func:`.source.of_rank`) and the rank it is (None outside a job)."""
        return source.of_rank(self.watcher, self.rank_choice.value if self.world_size > 1 else None)

    def _render(self, tab: int) -> None:
        w = self.watcher
        layer = self.layer.value
        found = self._findings
        try:
            v, shown = self.layer_source() if tab in (0, 1, 2, 4) else (w, None)
            if tab == 0:
                self._show("flow", gradient_flow(v, findings=source.findings_of_rank(found, shown), selected=layer))
            elif tab == 1:
                step = self.step.value if self.step.value != -1 else None
                self._show("hist", histogram(v, layer, of=self.of.value, step=step))
                self._show("dist", distribution(v, layer, of=self.of.value, selected_step=step))
            elif tab == 2:
                self._show("heat", heatmap(v, findings=source.findings_of_rank(found, shown)))
            elif tab == 3:
                self._show("curves", training_curves(w))
            elif tab == 4:
                self._show("dead", dead_units(v, layer, window=self.window))
            elif tab == 5:
                self._show("gradcheck", gradcheck_figure(self._report))
            elif tab == RANKS_TAB and self.world_size > 1:
                self._show("ranks", rank_times(w, selected=self.rank_choice.value, findings=found))
                self.ranks_html.value = _ranks_table(w, self.rank_choice.value)
        except Exception as exc:  # a view must never break the training step
            self.header.value += (f'<div style="color:{style.VERMILLION}">could not draw {TABS[tab]}: '
                                  f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>")
        self._stale.discard(tab)

    def _show(self, key: str, fig) -> None:
        self.images[key].value = style.png_bytes(fig)

    def _update_header(self) -> None:
        w = self.watcher
        found = self._findings
        status = "closed" if getattr(w, "closed", False) else ("live" if self.live else "not live")
        steps = w.steps()
        loss = source.column(steps, "loss")
        last = f", loss {loss[-1]:.4g}" if len(loss) and not np.isnan(loss[-1]) else ""
        counts = found["severity"].astype(str).value_counts() if len(found) else {}
        badge = " ".join(f'<span style="color:{style.SEVERITY_COLOR[s]};font-weight:bold">{int(counts[s])} {s}</span>'
                         for s in ("error", "warning", "info") if s in counts) or "no findings"
        where = ""
        if self.world_size > 1:
            where = f" · rank {int(getattr(w, 'rank', 0) or 0)} of {self.world_size}"
        self.header.value = (f"<b>gradsight</b> · <code>{html.escape(w.name)}</code>{where} — step "
                             f"<span class='jp-gradsight-dashboard-step'>{w.step_count}</span>{last} · {badge} · "
                             f"<span style='opacity:0.7'>{status}</span>")

    def _update_findings(self) -> None:
        try:
            found = self.watcher.findings()  # in findings() order: one order everywhere
        except Exception:
            found = source.findings_frame(None)
        self._findings = found
        if not len(found):
            options = [("No findings yet.", -1)]
        else:
            options = []
            ranked = self.world_size > 1 and "rank" in found.columns
            for i, r in enumerate(found.to_dict("records")):
                sev = str(r.get("severity", "")).upper()
                layer = style.short_name(str(r.get("layer", "")), 28)
                rank = f"rank {r['rank']!s:<3} " if ranked else ""
                options.append((f"{sev:<7} {rank}{r.get('kind', '')!s:<18} {layer:<28} step "
                                f"{r.get('step', '')!s:<6} {r.get('message', '')}", i))
        if [o[0] for o in options] != [o[0] for o in self.findings.options]:
            self._updating = True
            try:
                keep = self.findings.value
                self.findings.options = options
                self.findings.rows = max(2, min(6, len(options)))
                if keep not in (None, -1) and keep in [v for _, v in options]:
                    self.findings.value = keep
                else:
                    self.findings.index = None  # nothing chosen: a click on any row is a choice
            finally:
                self._updating = False

    def _update_steps(self) -> None:
        try:
            steps = self.layer_source()[0].histogram_steps(self.layer.value, self.of.value)
        except Exception:
            steps = []
        options = [(str(s), s) for s in steps] or [("—", -1)]
        if [v for _, v in options] == [v for _, v in self.step.options]:
            return
        follow = self.step.value == -1 or self.step.value == self.step.options[-1][1]
        self._updating = True
        try:
            old = self.step.value
            self.step.options = options
            values = [v for _, v in options]
            self.step.value = values[-1] if follow or old not in values else old
        finally:
            self._updating = False

    # --- user actions ----------------------------------------------------------------------
    def _on_finding(self, change) -> None:
        if self._updating or change["new"] in (None, -1):
            return
        row = self._findings.iloc[int(change["new"])]
        layer = str(row.get("layer", ""))
        changed = layer in self.watcher.layer_names and layer != self.layer.value
        if changed:
            self.layer.value = layer  # redraws the visible tab
        step = row.get("step")
        values = [v for _, v in self.step.options]
        if step is not None and values and values[0] != -1:
            with contextlib.suppress(TypeError, ValueError):
                self.step.value = min(values, key=lambda s: abs(s - int(step)))
        if not changed:
            self._render(self.tabs.selected_index or 0)

    def _on_layer(self, change) -> None:
        if self._updating:
            return
        self._update_steps()
        self._stale = set(range(len(TABS)))
        self._render(self.tabs.selected_index or 0)

    def _on_of(self, change) -> None:
        self._update_steps()
        self._render(1)

    def _on_step(self, change) -> None:
        if not self._updating:
            self._render(1)

    def _on_tab(self, change) -> None:
        tab = change["new"] or 0
        if tab in self._stale:
            self._render(tab)

    # --- sources and ranks -----------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return source.world_size(self.watcher)

    def _update_sources(self) -> None:
        """The source dropdown: live watchers and open recordings of this kernel, and the source
        shown now (even when closed); hidden while there is only one."""
        listed = [*bus.active_watchers(), *bus.open_recordings()]
        if not any(s is self.watcher for s in listed):
            listed.append(self.watcher)
        keys: dict[str, object] = {}
        for src in listed:
            key = source.label(src)
            k = 2
            while key in keys and keys[key] is not src:
                key, k = f"{source.label(src)}#{k}", k + 1
            keys[key] = src
        current = next(k for k, s in keys.items() if s is self.watcher)
        options = [(key + (" (closed)" if getattr(s, "closed", False) and not hasattr(s, "root") else ""), key)
                   for key, s in keys.items()]
        self._sources = {key: weakref.ref(s) for key, s in keys.items()}
        if options != list(self.source_choice.options) or self.source_choice.value != current:
            self._updating = True
            try:
                self.source_choice.options = options
                self.source_choice.value = current
            finally:
                self._updating = False
        self.source_choice.layout.display = None if len(options) > 1 else "none"
        self._place_choosers()

    def _on_source(self, change) -> None:
        if self._updating or change["new"] is None:
            return
        ref = self._sources.get(change["new"])
        src = ref() if ref is not None else None
        if src is not None and src is not self.watcher:
            self.show_source(src)

    def show_source(self, src) -> None:
        """Show ``src`` (a Watcher or a Recording): every view is redrawn from it."""
        if not source.is_watcher(src):
            raise TypeError(f"gradsight: show_source(src) expects a Watcher or a Recording; got {type(src).__name__}.")
        self.throttle.forget()
        self.watcher = src
        self._report = None
        self.gradcheck_html.value = ""
        self.check_button.disabled = not hasattr(src, "gradcheck")
        names = src.layer_names
        self._updating = True
        try:
            self.layer.options = [(style.short_name(n, 48), n) for n in names]
            self.layer.value = _default_layer(src) if names else None
            self.step.options = [("—", -1)]
            self.step.value = -1
            self.rank_choice.options = []
        finally:
            self._updating = False
        if self._displayed and not getattr(src, "closed", False):
            self.attach()  # live again (a closed source had detached the dashboard)
        self.refresh()

    def _update_ranks(self) -> None:
        """Rank dropdown, the rank-that-went-wrong-first line, and the Ranks tab (world_size > 1)."""
        world = self.world_size
        children = self._pages if world > 1 else self._pages[:RANKS_TAB]
        if len(self.tabs.children) != len(children):
            if (self.tabs.selected_index or 0) >= len(children):
                self.tabs.selected_index = 0
            self.tabs.children = children
            self.tabs.titles = TABS[:len(children)]
        if world < 2:
            self.rank_choice.layout.display = "none"
            self.rank_note.value = self.layers_rank_note.value = ""
            self._place_choosers()
            return
        bad = source.first_bad_rank(self._findings)
        me = int(getattr(self.watcher, "rank", 0) or 0)
        options = [(f"rank {r}" + (" ● went wrong first" if bad and bad["rank"] == r else "")
                    + (" (this process)" if r == me and not hasattr(self.watcher, "root") else ""), r)
                   for r in range(world)]
        if options != list(self.rank_choice.options):
            keep = self.rank_choice.value
            self._updating = True
            try:
                self.rank_choice.options = options
                self.rank_choice.value = keep if keep in range(world) else (bad["rank"] if bad else me)
            finally:
                self._updating = False
        self.rank_choice.layout.display = None
        self._place_choosers()
        self.rank_note.value = (f'<span class="jp-gradsight-first-bad" style="color:{style.VERMILLION};'
                                f'font-weight:bold">{html.escape(first_bad_text(bad))}</span>' if bad else
                                f'<span style="opacity:0.7">no rank has an error finding ({world} ranks)</span>')
        self._update_layers_rank()

    def _update_layers_rank(self) -> None:
        """Say which rank the layer views show; when it is not the chosen one (a live watcher holds
        only its own rank's layers), say why and where the chosen rank's are."""
        chosen = self.rank_choice.value
        _, shown = self.layer_source()
        if shown is None or chosen is None:
            self.layers_rank_note.value = ""
        elif shown == chosen:
            self.layers_rank_note.value = (f'<span class="jp-gradsight-layers-rank" style="opacity:0.7">layer views '
                                           f"show rank {shown}</span>")
        else:
            why = ("this process: rank {c}'s layer statistics stay in rank {c}'s process; record the job "
                   "(gs.watch(..., record=path) on every rank) and gs.open it to see every rank" if not
                   hasattr(self.watcher, "root") else "this recording holds no layer statistics of rank {c} (yet)")
            self.layers_rank_note.value = (f'<span class="jp-gradsight-layers-rank" style="color:{style.VERMILLION}">'
                                           f"layer views show rank {shown} ({html.escape(why.format(c=chosen))})"
                                           "</span>")

    def _place_choosers(self) -> None:
        wanted = self.source_choice.layout.display != "none" or self.rank_choice.layout.display != "none"
        children = list(self.children)
        if wanted and self.choosers not in children:
            self.children = [*children[:2], self.choosers, *children[2:]]  # under the header
        elif not wanted and self.choosers in children:
            self.children = [c for c in children if c is not self.choosers]

    def _on_rank(self, change) -> None:
        """Another rank: its times, and its layers in every layer view the source holds them for."""
        if self._updating or change["new"] is None:
            return
        self._update_layers_rank()
        self._update_steps()
        self._stale = set(range(len(TABS)))
        tab = self.tabs.selected_index or 0
        self._render(tab)
        if tab != RANKS_TAB:
            self._render(RANKS_TAB)

    def run_gradcheck(self) -> None:
        """Check the selected layer's backward on the inputs it saw in the last step."""
        layer = self.layer.value
        self.gradcheck_html.value = f"checking <code>{html.escape(layer)}</code> …"
        try:
            self._report = self.watcher.gradcheck(layer)
            self.gradcheck_html.value = self._report._repr_html_()
        except Exception as exc:
            self._report = None
            self.gradcheck_html.value = (f'<span style="color:{style.VERMILLION}">{html.escape(type(exc).__name__)}: '
                                         f"{html.escape(str(exc))}</span>")
        self._render(5)


def _newest_source():
    """``gs.dashboard()`` with no source: the newest live watcher, else the newest open recording."""
    for found in (bus.active_watchers(), bus.open_recordings()):
        if found:
            return found[-1]
    raise ValueError("gradsight: no model is watched in this kernel and no recording is open. Run "
                     "w = gs.watch(model) (or rec = gs.open(path)) first, then gs.dashboard().")


def _ranks_table(src, selected: int) -> str:
    """``ranks()`` as an HTML table, the selected rank's row highlighted."""
    try:
        table = src.ranks()
    except Exception as exc:
        return f"<i>no rank table: {html.escape(str(exc))}</i>"
    ms = [c for c in table.columns if str(c).endswith("_s")]
    shown = table.copy()
    shown[ms] = shown[ms] * 1000
    shown = shown.rename(columns={c: f"{str(c)[:-2]} (ms)" for c in ms})
    rows = []
    for _, row in shown.iterrows():
        style_ = ' style="font-weight:bold;background:rgba(0,114,178,0.12)"' if int(row["rank"]) == selected else ""
        cells = "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.to_numpy())
        rows.append(f"<tr{style_}>{cells}</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    return (f'<table class="jp-gradsight-ranks" style="font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def _default_layer(w) -> str:
    """The first flagged layer, else the first leaf layer with parameters, else the first leaf."""
    names = w.layer_names
    try:
        found = w.findings()
        rank = found["severity"].map(SEVERITY_RANK).fillna(len(SEVERITY_RANK))
        for layer in found["layer"][rank.sort_values(kind="stable").index]:  # the most serious, earliest
            if str(layer) in names:
                return str(layer)
    except Exception:
        pass
    leaves = [names[i] for i in source.leaf_layers(names)]
    try:
        df = w.layers()
        with_params = [n for n in leaves if int(df.loc[df["layer"] == n, "params"].iloc[0]) > 0]
        if with_params:
            return with_params[0]
    except Exception:
        pass
    return leaves[0] if leaves else names[0]
