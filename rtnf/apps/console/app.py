"""The operator console: a Bokeh server app fed by the console's subscriber.

One process, two threads:

- the subscriber thread (:class:`rtnf.apps.console.link.Subscriber`) owns the
  ZeroMQ SUB sockets and puts decoded messages on a :class:`queue.Queue`;
- the Tornado event loop of the Bokeh server drains that queue every 50 ms
  into one :class:`rtnf.apps.console.state.RunState`, and every open page (one
  Bokeh document per browser tab) sends itself what is new every 100 ms:
  new volumes are streamed, changed ones (a late screen acknowledgement)
  are patched. State, documents and callbacks all live on the event loop's
  thread, so nothing is shared between threads but the queue.

A page opened or reloaded mid-run is built from the whole run so far. The
page is read-only: it sends nothing to rtnf or the screen. BokehJS is served
by the Bokeh server itself (``/static``): no internet is needed.

For tests and scripts, the page defines ``window.rtnfConsole`` (see
:data:`PAGE_TEMPLATE`) and names its Bokeh models: the ColumnDataSource
``volumes`` holds every plotted point, the Div ``status`` carries the state as
JSON in its ``tags``, the Div ``alerts`` lists the alerts as
``<div class="rtnf-alert" data-alert="recording|error|no_feedback|motion|saturation|stall|screen|rtnf">``,
the Div ``events`` lists rtnf's ``log`` messages newest first as
``<div class="rtnf-event level-warning" data-level="WARNING">``, and the
ColumnDataSources ``preview_<plane>`` / ``outline_<plane>`` hold the latest
preview as drawn (``window.rtnfConsole.preview()`` returns them as rows).
The DataRange1d models ``motion_range_trans``, ``motion_range_rots`` and
``motion_range_fd`` are the motion plots' y ranges.

People read volume numbers 1-based: the plots' x axis is the ``volume``
column (``index + 1``), the header says "volume N of M (acq K)" with the
scanner's file number K, and rotations are plotted in degrees (the wire and
the table keep radians).

The preview is drawn as described in :mod:`rtnf.apps.console.preview`: each plane
transposed, first row at the bottom (neurological for RAS-ordered voxels), the
t-map overlaid where ``|t| > 3`` (blue-cyan below -3, red-yellow above 3) and
the ROIs outlined in their plot colours.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.core.templates import get_env
from bokeh.core.validation import silence
from bokeh.core.validation.warnings import MISSING_RENDERERS
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTickFormatter,
    BoxAnnotation,
    ColumnDataSource,
    DataRange1d,
    Div,
    FixedTicker,
    HoverTool,
    InlineStyleSheet,
    LinearAxis,
    Range1d,
    Span,
)
from bokeh.models import Image as ImageGlyph
from bokeh.models import LinearColorMapper
from bokeh.palettes import Category10_10, Greys256, Set2_8
from bokeh.plotting import figure
from bokeh.server.server import Server
from tornado.ioloop import IOLoop, PeriodicCallback

from rtnf.wire.messages import DEFAULT_ADDRESS, DEFAULT_SCREEN_ADDRESS

from .link import Message, Subscriber
from .preview import PLANES, T_THRESHOLD, Preview
from rtnf.wire.messages import volume_label
from .state import MARKS, STAGES, RunState, clock_time

log = logging.getLogger(__name__)

# Plots of ROIs are empty until the run says which ROIs it has: not a mistake.
silence(MISSING_RENDERERS, True)

DRAIN_MS = 50  # queue -> state
TICK_MS = 100  # state -> each open page
PLOT_HEIGHT = 200
# The smallest y range of the motion plots: translations (mm), rotations (degrees), framewise displacement (mm).
MOTION_MIN_RANGE = {"trans": (-1.0, 1.0), "rots": (-1.0, 1.0), "fd": (0.0, 1.0)}
PREVIEW_HEIGHT = 210  # pixels of each preview plane's frame (width follows the plane's aspect)
T_LIMIT = 8.0  # the t colour scale runs from -T_LIMIT to T_LIMIT (clamped beyond)


def _t_palette(threshold: float, n: int = 256) -> list[str]:
    """Diverging palette over [-T_LIMIT, T_LIMIT]: blue -> cyan below -threshold, red -> yellow above.

    |t| at the threshold is the darkest colour and brightens with |t|; the
    middle (never drawn: those values are NaN) is grey.
    """
    out = []
    for i in range(n):
        t = -T_LIMIT + 2 * T_LIMIT * (i + 0.5) / n
        f = min(1.0, max(0.0, (abs(t) - threshold) / (T_LIMIT - threshold)))
        if t <= -threshold:
            out.append("#%02x%02x%02x" % (0, int(round(255 * f)), 255))
        elif t >= threshold:
            out.append("#%02x%02x%02x" % (255, int(round(255 * f)), 0))
        else:
            out.append("#808080")
    return out

PAGE_TEMPLATE = """
{% block preamble %}
<style>
  body { background: #f4f5f7; font-family: system-ui, sans-serif; margin: 0; padding: 8px 12px; }
</style>
<script>
  // Read-only access to what the page shows, for tests and scripts.
  window.rtnfConsole = {
    doc() { return (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null; },
    model(name) { const d = this.doc(); return d ? d.get_model_by_name(name) : null; },
    data() {
      const source = this.model("volumes");
      if (source == null) return null;
      const entries = source.data instanceof Map ? [...source.data.entries()] : Object.entries(source.data);
      const out = {};
      for (const [key, values] of entries) {
        out[key] = Array.from(values, (v) => (typeof v === "number" && !Number.isFinite(v)) ? null : v);
      }
      return out;
    },
    status() { const div = this.model("status"); return div && div.tags.length ? JSON.parse(div.tags[0]) : null; },
    // The latest preview as drawn: per plane the 2D arrays (rows from the bottom, NaN as null) and the ROI outlines.
    preview() {
      const col = (source, key) => source.data instanceof Map ? source.data.get(key) : source.data[key];
      const rows = (nd) => {
        const [h, w] = nd.shape, out = [];
        for (let r = 0; r < h; r++) {
          out.push(Array.from(nd.slice(r * w, (r + 1) * w), (v) => Number.isFinite(v) ? v : null));
        }
        return out;
      };
      const planes = {};
      let index = null;
      for (const name of ["sagittal", "coronal", "axial"]) {
        const source = this.model("preview_" + name), lines = this.model("outline_" + name);
        if (source == null || col(source, "image").length === 0) continue;
        index = col(source, "index")[0];
        const outlines = {};
        const rois = lines ? Array.from(col(lines, "roi")) : [];
        rois.forEach((roi, i) => {
          const fix = (a) => Array.from(a, (v) => Number.isFinite(v) ? v : null);
          outlines[roi] = {xs: fix(col(lines, "xs")[i]), ys: fix(col(lines, "ys")[i])};
        });
        planes[name] = {image: rows(col(source, "image")[0]), tmap: rows(col(source, "tmap")[0]),
                        width: col(source, "dw")[0], height: col(source, "dh")[0], outlines};
      }
      return Object.keys(planes).length ? {index, planes} : null;
    },
    events() {
      const div = this.model("events");
      return div && div.tags.length ? JSON.parse(div.tags[0]) : [];
    },
  };
</script>
{% endblock %}
"""

CSS = """
:host { width: 100%; }
.rtnf-status, .rtnf-alerts, .rtnf-ok, .rtnf-preview { box-sizing: border-box; width: 100%; }
.rtnf-status { font-size: 15px; line-height: 1.6; padding: 6px 10px; background: #fff; border-radius: 6px;
  border: 1px solid #d0d4da; }
.rtnf-status .badge { display: inline-block; min-width: 90px; text-align: center; font-weight: 700;
  color: #fff; border-radius: 4px; padding: 0 8px; margin-right: 10px; }
.phase-waiting .badge { background: #8a8f98; }
.phase-running .badge { background: #1f8b4c; }
.phase-ended .badge { background: #2b5dab; }
.phase-aborted .badge { background: #b3261e; }
.rtnf-status .muted { color: #5f6670; font-size: 13px; }
.rtnf-alerts { display: flex; flex-direction: column; gap: 4px; }
.rtnf-alert { padding: 6px 10px; border-radius: 6px; font-weight: 600; }
.rtnf-alert.level-error { background: #fde7e6; color: #8c1d18; border: 1px solid #e8a29d; }
.rtnf-alert.level-warning { background: #fff4d6; color: #6b4e00; border: 1px solid #e7cf85; }
.rtnf-ok { padding: 6px 10px; border-radius: 6px; color: #1f5f3a; background: #e3f4e9; border: 1px solid #a8d5b8; }
.rtnf-preview { padding: 4px 8px; border-radius: 6px; color: #3d434b; background: #fff; border: 1px solid #d0d4da;
  font-size: 13px; }
.rtnf-preview.empty { border-style: dashed; color: #5f6670; }
.rtnf-preview .sw { display: inline-block; width: 10px; height: 10px; margin: 0 3px 0 8px; border-radius: 2px; }
.rtnf-events { box-sizing: border-box; width: 100%; background: #fff; border: 1px solid #d0d4da; border-radius: 6px;
  font-size: 13px; }
.rtnf-events .head { font-weight: 700; padding: 4px 8px; border-bottom: 1px solid #e3e6ea; }
.rtnf-events .list { max-height: 236px; overflow-y: auto; }
.rtnf-event { padding: 2px 8px; border-bottom: 1px solid #f0f1f3; font-family: ui-monospace, monospace;
  white-space: pre-wrap; word-break: break-word; }
.rtnf-event .lvl { display: inline-block; min-width: 64px; font-weight: 700; }
.rtnf-event .time { color: #5f6670; margin-right: 6px; }
.rtnf-event.level-error, .rtnf-event.level-critical { background: #fde7e6; color: #8c1d18; }
.rtnf-event.level-warning { background: #fff8e1; color: #6b4e00; }
.rtnf-event.level-info, .rtnf-event.level-debug { color: #3d434b; }
.rtnf-events .none { padding: 4px 8px; color: #5f6670; }
.rtnf-ratings { box-sizing: border-box; width: 100%; background: #fff; border: 1px solid #d0d4da; border-radius: 6px;
  font-size: 13px; }
.rtnf-ratings .head { font-weight: 700; padding: 4px 8px; border-bottom: 1px solid #e3e6ea; }
.rtnf-ratings .list { max-height: 180px; overflow-y: auto; }
.rtnf-ratings table { border-collapse: collapse; width: 100%; }
.rtnf-ratings th, .rtnf-ratings td { text-align: left; padding: 1px 8px; border-bottom: 1px solid #f0f1f3; }
.rtnf-ratings td.num { text-align: right; font-variant-numeric: tabular-nums; }
.rtnf-ratings tr.timed-out td { color: #8c1d18; }
.rtnf-ratings .muted { color: #5f6670; }
"""


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _fmt_saturation(sat: dict[str, Any]) -> str:
    """The status line's count of regulation volumes with the feedback bar at an end."""
    if sat["fraction"] is None:
        return "feedback at the bar's ends: –"
    return (f"feedback at the bar's ends: {sat['at_end']} of {sat['regulation']} regulation volumes "
            f"({100 * sat['fraction']:.0f} %; full {sat['top']}, empty {sat['bottom']})")


def _fmt_shaping(threshold: float, scores: Iterable[dict[str, Any]]) -> str:
    """The status line's success threshold ([feedback.shaping]) with the last block's score and the tally."""
    scores = list(scores)
    text = (f'block threshold <b data-threshold="{threshold!r}">{threshold:.3g}</b>'
            ' <span class="muted" title="a regulation block succeeds when its mean feedback signal (oriented as '
            'success, shifted by the hemodynamic lag) exceeds it">(signal units)</span>')
    if scores:
        last = scores[-1]
        verdict = "success" if last["success"] else "no success"
        text += (f" · last block {last['value']:.3g}: <b>{verdict}</b>"
                 f" · {sum(bool(b['success']) for b in scores)} of {len(scores)} blocks succeeded")
    return text


def _fmt_cleaning(cleaning: dict[str, Any]) -> str:
    """Per ROI: tSNR raw -> cleaned, and the share of its variance each nuisance set alone explains."""
    parts = []
    for roi, v in cleaning["rois"].items():
        if not math.isfinite(v["tsnr_raw"]):
            continue
        shares = ", ".join(f"{s} {100 * r:.0f} %" for s, r in v["unique_r2"].items() if math.isfinite(r))
        parts.append(f'<span data-cleaning="{html.escape(roi)}" title="tSNR of the raw ROI mean and of the signal '
                     f'cleaned of every nuisance set; % of its variance only that set explains">{html.escape(roi)} '
                     f'tSNR {v["tsnr_raw"]:.0f} → {v["tsnr_clean"]:.0f} ({shares})</span>')
    return "cleaning: " + "; ".join(parts) if parts else "cleaning: –"


def _finite_only(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None: the page parses the status as strict JSON."""
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt_ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f} ms"


class ConsolePage:
    """One browser tab: a Bokeh document kept in step with the shared :class:`RunState`.

    Parameters
    ----------
    doc : bokeh.document.Document
        The session's document.
    state : RunState
        Owned by the server's event loop, like this page.
    clock : callable
        Returns the current time (``time.time``); replaced in tests.
    """

    def __init__(self, doc: Document, state: RunState, clock: Callable[[], float] = time.time) -> None:
        self.doc = doc
        self.state = state
        self.clock = clock
        self.css = InlineStyleSheet(css=CSS)
        doc.title = "rtnf console"
        doc.template = get_env().from_string("{% extends base %}\n" + PAGE_TEMPLATE)
        # Named models live as long as the page: a rebuild replaces the plots only.
        self.status = Div(name="status", stylesheets=[self.css], sizing_mode="stretch_width")
        self.alerts = Div(name="alerts", stylesheets=[self.css], sizing_mode="stretch_width")
        self.preview = Div(name="preview", stylesheets=[self.css], sizing_mode="stretch_width")
        self.preview_planes = row()
        # Bokeh wraps a Div's text in an inline-block: let the event list fill the width beside the preview.
        fill = InlineStyleSheet(css=".bk-clearfix { display: block !important; }")
        self.events = Div(name="events", stylesheets=[self.css, fill], sizing_mode="stretch_width", min_width=300)
        # The participant's ratings as they arrive (empty in a run without ratings); JSON rows in its tags.
        self.ratings = Div(name="ratings", stylesheets=[self.css, fill], sizing_mode="stretch_width")
        self.plots = row(sizing_mode="stretch_width")
        self.root = column(
            self.status, self.alerts,
            row(column(self.preview, self.preview_planes), self.events, sizing_mode="stretch_width"),
            self.ratings, self.plots, sizing_mode="stretch_width",
        )
        self.preview_sources: dict[str, tuple[ColumnDataSource, ColumnDataSource]] = {}
        self.preview_key: tuple | None = None
        self.t_mapper = LinearColorMapper(palette=_t_palette(T_THRESHOLD), low=-T_LIMIT, high=T_LIMIT, nan_color=(0, 0, 0, 0))
        self.grey_mapper = LinearColorMapper(palette=Greys256, low=0, high=255)
        self.source: ColumnDataSource | None = None
        self.layout_key: tuple | None = None
        self.build()
        doc.add_root(self.root)
        doc.add_periodic_callback(self.tick, TICK_MS)

    # ------------------------------------------------------------------ layout
    def build(self) -> None:
        """(Re)load the page from the state: on open, and for a new run.

        The figures are rebuilt only when what they are built from changed
        (ROIs, protocol blocks, number of volumes); otherwise the data alone
        are replaced, which the browser draws much faster.
        """
        st = self.state
        self.generation = st.generation
        self.n_sent = len(st.rows)
        self.change_cursor = len(st.changes)
        self._last_texts = {}
        self.previews_sent = -1  # redraw the preview and the event list
        self.events_sent = -1
        self.ratings_sent: tuple | None = None
        layout_key = st.layout_key()
        if self.source is not None and layout_key == self.layout_key:
            self.source.data = st.column_data()
            self._update_texts()
            self._update_preview()
            return
        self.layout_key = layout_key
        if self.source is not None:
            self.source.name = None  # the browser may keep the old model for a while
        # A new source (the columns change with the ROIs), plotted by new figures.
        self.source = ColumnDataSource(st.column_data(), name="volumes")
        n = st.n_volumes
        self.x_range = Range1d(0.5, n + 0.5) if n else DataRange1d()  # volumes 1..n
        self._last_texts: dict[str, Any] = {}
        self._update_texts()

        roi_colors = {roi: Category10_10[i % 10] for i, roi in enumerate(st.rois)}
        raw = self._figure("ROI signal, raw (scanner units)")
        clean = self._figure("ROI signal, drift-cleaned (scanner units)")
        psc = self._figure("Percent signal change and feedback value", y_label="% signal change")
        for roi, color in roi_colors.items():
            raw.line("volume", f"raw_{roi}", source=self.source, color=color, line_width=2, legend_label=roi)
            clean.line("volume", f"clean_{roi}", source=self.source, color=color, line_width=2, legend_label=roi)
            psc.line("volume", f"psc_{roi}", source=self.source, color=color, line_width=2, legend_label=f"{roi} PSC")
        psc.extra_y_ranges = {"feedback": Range1d(-0.05, 1.05)}
        psc.add_layout(LinearAxis(y_range_name="feedback", axis_label="feedback [0, 1]"), "right")
        psc.step("volume", "feedback", source=self.source, y_range_name="feedback", mode="center", color="black",
                 line_width=2, legend_label="feedback")
        psc.scatter("volume", "feedback", source=self.source, y_range_name="feedback", color="black", size=4)
        events = self._figure("Missing, late, censored and high-motion volumes", height=140)
        events.y_range = Range1d(0.5, len(MARKS) + 0.5)
        events.yaxis.ticker = FixedTicker(ticks=[y for _, y in MARKS])
        events.yaxis.major_label_overrides = {y: name for name, y in MARKS}
        events.ygrid.grid_line_color = None
        for (name, _), color, marker in zip(MARKS, ("#555555", "#e08a00", "#7b3fb0", "#d62728"),
                                            ("x", "triangle", "square", "circle")):
            events.scatter("volume", f"mark_{name}", source=self.source, color=color, size=10, marker=marker)

        trans = self._figure("Head motion: translations (mm)", y_label="mm")
        rots = self._figure("Head motion: rotations (degrees)", y_label="degrees")
        for axis, color in zip("xyz", ("#d62728", "#2ca02c", "#1f77b4")):
            trans.line("volume", f"trans_{axis}", source=self.source, color=color, line_width=2, legend_label=axis)
            rots.line("volume", f"rot_{axis}_deg", source=self.source, color=color, line_width=2, legend_label=axis)
        fd = self._figure(f"Framewise displacement (threshold {st.fd_threshold_mm:g} mm)", y_label="mm")
        fd.line("volume", "fd", source=self.source, color="#333333", line_width=2)
        fd.scatter("volume", "fd_high", source=self.source, color="#d62728", size=9)
        fd.add_layout(Span(location=st.fd_threshold_mm, dimension="width", line_color="#d62728",
                           line_dash="dashed", line_width=2))
        # Sub-millimetre noise must not look like motion: each axis shows at least MOTION_MIN_RANGE, and
        # the FD axis always reaches above the threshold line.
        fd_top = max(MOTION_MIN_RANGE["fd"][1], 1.15 * st.fd_threshold_mm)
        for fig, name, (low, high) in ((trans, "trans", MOTION_MIN_RANGE["trans"]),
                                       (rots, "rots", MOTION_MIN_RANGE["rots"]), (fd, "fd", (0.0, fd_top))):
            fig.y_range = DataRange1d(name=f"motion_range_{name}", range_padding=0.05)
            self._min_extent(fig, low, high)
        latency = self._figure("Latency per volume (from file detected)", y_label="ms")
        stage_columns = [c for c, _, _ in STAGES]
        stage_labels = ["read", "preprocess", "model", "publish", "screen"]
        latency.vbar_stack(stage_columns, x="volume", width=0.8, source=self.source, color=list(Set2_8[:5]),
                           legend_label=stage_labels)
        latency.line("volume", "e2e_ms", source=self.source, color="black", line_width=2, legend_label="end-to-end")
        latency.scatter("volume", "processing_ms", source=self.source, color="#444444", size=4,
                        legend_label="processing")
        latency.y_range.start = 0

        for fig in (raw, clean, psc, trans, rots, fd, latency):
            if fig.legend:  # above the plot area, never over the data
                legend = fig.legend[0]
                legend.click_policy = "hide"
                legend.label_text_font_size = "9pt"
                legend.orientation = "horizontal"
                legend.location = "top_left"
                legend.padding = 2
                legend.margin = 0
                legend.border_line_alpha = 0
                fig.center.remove(legend)
                fig.add_layout(legend, "above")
        self._add_blocks((raw, clean, psc, events, trans, rots, fd, latency))

        left = column(raw, clean, psc, events, sizing_mode="stretch_width")
        right = column(trans, rots, fd, latency, sizing_mode="stretch_width")
        self.plots.children = [left, right]
        self.preview_key = None  # the ROI colours may have changed
        self._update_preview()

    # ------------------------------------------------------------------ preview
    def _roi_color(self, roi: str, k: int) -> str:
        rois = self.state.rois
        return Category10_10[(rois.index(roi) if roi in rois else len(rois) + k) % 10]

    def _build_preview(self, preview: Preview) -> None:
        """Three figures (one per plane), each an image in grey, the t-map over it and the ROI outlines."""
        self.preview_key = preview.key()
        for sources in self.preview_sources.values():
            for source in sources:
                source.name = None
        self.preview_sources = {}
        figures = []
        for name in PLANES:
            plane = preview.planes.get(name)
            if plane is None:
                continue
            image = ColumnDataSource(self._image_data(preview, name), name=f"preview_{name}")
            lines = ColumnDataSource(self._outline_data(preview, name), name=f"outline_{name}")
            scale = PREVIEW_HEIGHT / plane.height
            fig = figure(
                title=name, frame_height=PREVIEW_HEIGHT, frame_width=max(40, int(round(plane.width * scale))),
                x_range=Range1d(0, plane.width), y_range=Range1d(0, plane.height),
                tools="save", toolbar_location=None, min_border=4,
            )
            fig.axis.visible = False
            fig.grid.visible = False
            fig.background_fill_color = "black"
            fig.title.text_font_size = "10pt"
            fig.add_glyph(image, ImageGlyph(image="image", x="x", y="y", dw="dw", dh="dh", color_mapper=self.grey_mapper))
            fig.add_glyph(image, ImageGlyph(image="tmap", x="x", y="y", dw="dw", dh="dh", color_mapper=self.t_mapper,
                                            global_alpha=0.8))
            fig.multi_line("xs", "ys", source=lines, line_color="color", line_width=2)
            self.preview_sources[name] = (image, lines)
            figures.append(fig)
        self.preview_planes.children = figures

    @staticmethod
    def _image_data(preview: Preview, name: str) -> dict[str, list]:
        plane = preview.planes[name]
        return {"image": [plane.image], "tmap": [plane.tmap], "x": [0.0], "y": [0.0],
                "dw": [plane.width], "dh": [plane.height], "index": [preview.index]}

    def _outline_data(self, preview: Preview, name: str) -> dict[str, list]:
        outlines = preview.planes[name].outlines
        rois = list(outlines)
        return {"xs": [outlines[r][0] for r in rois], "ys": [outlines[r][1] for r in rois],
                "roi": rois, "color": [self._roi_color(r, k) for k, r in enumerate(rois)]}

    def _update_preview(self) -> None:
        st = self.state
        if self.previews_sent == st.n_previews:
            return
        self.previews_sent = st.n_previews
        preview = st.preview
        if preview is None:
            self.preview_planes.children = []
            self.preview_sources = {}
            self.preview_key = None
        else:
            if preview.key() != self.preview_key:
                self._build_preview(preview)  # with the data
            else:
                for name, (image, lines) in self.preview_sources.items():
                    image.data = self._image_data(preview, name)
                    lines.data = self._outline_data(preview, name)
        self._set("preview", self.preview, "text", self._preview_caption(preview))

    def _preview_caption(self, preview: Preview | None) -> str:
        if preview is None:
            return ('<div class="rtnf-preview empty" data-preview="none">Latest volume: no preview received yet '
                    "(three planes through the feedback ROI, with the t-map and ROI outlines).</div>")
        latest = self.state.latest()
        n = self.state.n_volumes
        lag = ""
        if latest is not None and preview.index is not None and latest["index"] != preview.index:
            lag = f" (latest: volume {latest['index'] + 1})"
        title = "Volume ?" if preview.index is None else volume_label(preview.index, n).capitalize()
        rois = "".join(f'<span class="sw" style="background:{self._roi_color(r, k)}"></span>{html.escape(r)}'
                       for k, r in enumerate(preview.rois))
        if preview.has_tmap:
            tmap = (f't-map |t| &gt; {preview.threshold:g}: <span class="sw" style="background:#ff8000"></span>positive '
                    '<span class="sw" style="background:#0080ff"></span>negative')
        else:
            tmap = "no t-map (whole-brain model off)"
        side = "neurological: right on the right" if preview.oriented else "neurological for RAS-ordered voxels"
        return (f'<div class="rtnf-preview" data-preview="{preview.index}"><b>{title}</b>{lag} · '
                f"{tmap} · ROIs {rois} · <span title=\"x = first voxel axis, y = second; see rtnf.apps.console.preview\">"
                f"{side}</span></div>")

    def _update_events(self) -> None:
        st = self.state
        if self.events_sent == st.n_events:
            return
        self.events_sent = st.n_events
        events = list(st.events)[::-1]  # newest first
        items = "".join(
            f'<div class="rtnf-event level-{e.level.lower()}" data-level="{e.level}">'
            f'<span class="time">{clock_time(e.t)}</span><span class="lvl">{e.level}</span>{html.escape(e.message)}</div>'
            for e in events
        ) or '<div class="none">No warnings or errors from rtnf in this run.</div>'
        dropped = st.n_events - len(events)
        more = f" · {dropped} older not shown" if dropped else ""
        self.events.text = (f'<div class="rtnf-events"><div class="head">Events (newest first): {len(events)}{more}</div>'
                            f'<div class="list">{items}</div></div>')
        self.events.tags = [json.dumps([{"level": e.level, "message": e.message, "t": e.t} for e in events])]

    def _update_ratings(self) -> None:
        """The ratings table (newest first), redrawn when a rating arrives or one shows on the participant's screen."""
        st = self.state
        key = (st.n_ratings, st.rating_on_screen)
        if self.ratings_sent == key:
            return
        self.ratings_sent = key
        if not st.n_ratings and st.rating_on_screen is None:
            self.ratings.text = ""
            self.ratings.tags = [json.dumps([])]
            return
        ratings = list(st.ratings)[::-1]
        n = st.n_volumes

        def answer(r: dict[str, Any]) -> str:
            if r["value"] is None:
                return "no answer (time limit)" if r["timed_out"] else "no answer"
            scale = r["scale"]
            return f"{r['value']:g}" + (f" <span class=\"muted\">({scale[0]:g}–{scale[1]:g})</span>" if scale else "")

        def rt(seconds: float | None) -> str:
            return "–" if seconds is None else f"{seconds:.2f} s"

        def where(r: dict[str, Any]) -> str:
            text = html.escape(str(r["when"] or ""))
            if r["block"] is not None:
                text += f" block {r['block'] + 1}" + (f" ({html.escape(r['condition'])})" if r["condition"] else "")
            return text

        rows = "".join(
            f'<tr class="{"timed-out" if r["value"] is None else "answered"}" data-question="{html.escape(r["question"])}" '
            f'data-value="{"" if r["value"] is None else r["value"]}">'
            f'<td>{clock_time(r["t_onset"] if r["t_onset"] is not None else r["t_received"])}</td>'
            f'<td title="{html.escape(r["text"])}">{html.escape(r["question"])}</td><td class="num">{answer(r)}</td>'
            f'<td class="num">{rt(r["response_time_s"])}</td>'
            f"<td>{where(r)}</td>"
            f'<td>{"–" if r["index"] is None else html.escape(volume_label(r["index"], n))}</td></tr>'
            for r in ratings
        )
        now = ("" if st.rating_on_screen is None else
               f' · on the participant\'s screen now: <b data-rating-now="1">{html.escape(st.rating_on_screen)}</b>')
        self.ratings.text = (
            f'<div class="rtnf-ratings"><div class="head">Ratings (newest first): {st.n_ratings}{now}</div>'
            '<div class="list"><table><thead><tr><th>shown at</th><th>question</th><th>answer</th><th>response time</th>'
            f"<th>moment</th><th>volume on screen</th></tr></thead><tbody>{rows}</tbody></table></div></div>"
        )
        self.ratings.tags = [json.dumps([{k: v for k, v in r.items()} for r in ratings])]

    def _figure(self, title: str, y_label: str | None = None, height: int = PLOT_HEIGHT):
        fig = figure(
            title=title, height=height, sizing_mode="stretch_width", x_range=self.x_range,
            tools="xpan,xwheel_zoom,box_zoom,reset,save", toolbar_location="right",
            x_axis_label="volume (1 = first kept volume)", y_axis_label=y_label,
        )
        fig.add_tools(HoverTool(tooltips=[("volume", "@volume"), ("condition", "@condition"), ("value", "$y{0.000}")],
                                mode="mouse"))
        fig.yaxis.formatter = BasicTickFormatter(use_scientific=False)  # 0.002, never 2.000e-3
        fig.title.text_font_size = "11pt"
        return fig

    @staticmethod
    def _min_extent(fig, low: float, high: float) -> None:
        """Make ``fig``'s auto range include [low, high]: two invisible points, left out of the hover tool."""
        extent = fig.scatter(x=[1, 1], y=[low, high], size=0, alpha=0, name="extent")
        for hover in fig.select(type=HoverTool):
            hover.renderers = [r for r in fig.renderers if r.name != "extent"]
        extent.level = "underlay"

    def _add_blocks(self, figures) -> None:
        """Shade the protocol's non-baseline blocks, one color per condition."""
        st = self.state
        colors = {c: Category10_10[(i + 1) % 10] for i, c in enumerate(x for x in st.conditions if x != st.baseline)}
        for fig in figures:
            for b in st.blocks:
                if b["condition"] == st.baseline or b["condition"] not in colors:
                    continue
                fig.add_layout(BoxAnnotation(left=b["start"] + 0.5, right=b["stop"] + 0.5,
                                             fill_color=colors[b["condition"]], fill_alpha=0.12, line_alpha=0,
                                             level="underlay"))
        self.block_colors = colors

    # ------------------------------------------------------------------ updates
    def tick(self) -> None:
        """Send what changed since the last tick (runs on the server's event loop)."""
        st = self.state
        if st.generation != self.generation:
            self.build()
            return
        if len(st.changes) > self.change_cursor:
            positions = sorted({p for p in st.changes[self.change_cursor:] if p < self.n_sent})
            self.change_cursor = len(st.changes)
            if positions:
                self.source.patch({c: [(p, st.rows[p][c]) for p in positions] for c in st.columns()})
        if len(st.rows) > self.n_sent:
            self.source.stream(st.column_data(self.n_sent))
            self.n_sent = len(st.rows)
        self._update_texts()
        self._update_preview()

    def _set(self, key: str, model: Any, attr: str, value: Any) -> None:
        if self._last_texts.get(key) != value:
            self._last_texts[key] = value
            setattr(model, attr, value)

    def _update_texts(self) -> None:
        st = self.state
        now = self.clock()
        phase = st.phase
        latest = st.latest()
        n = st.n_volumes
        block = st.current_block()
        counts = st.counts()
        saturation = st.saturation()
        alerts = st.alerts(now)
        elapsed = st.elapsed_s(now)
        volume = "–" if latest is None else f"{latest['index'] + 1}"
        parts = [f'volume <b data-volume="{volume}">{volume}</b> of <b>{n if n else "?"}</b>'
                 + ("" if latest is None or math.isnan(latest["acquisition"]) else
                    f' <span class="muted" title="volume number in the scanner\'s file name">'
                    f'(acq {int(latest["acquisition"])})</span>')]
        if latest is not None:
            parts.append(f"condition <b>{html.escape(latest['condition'] or '?')}</b>")
        if block is not None:
            parts.append(f"block {block['number'] + 1} of {len(st.blocks)} (volumes {block['start'] + 1}–{block['stop']})")
        elif latest is not None and not math.isnan(latest["block"]):
            parts.append(f"block {int(latest['block']) + 1}")
        parts.append(f"elapsed <b>{_fmt_duration(elapsed)}</b>")
        if st.threshold is not None:
            parts.append(_fmt_shaping(st.threshold, st.block_scores))
        shading = getattr(self, "block_colors", {})
        if shading:
            parts.append("shaded: " + " ".join(
                f'<span style="background:{color}33;border:1px solid {color};padding:0 6px;border-radius:3px">'
                f"{html.escape(condition)}</span>" for condition, color in shading.items()
            ))
        label = {"waiting": "WAITING", "running": "RUNNING", "ended": "ENDED", "aborted": "ABORTED"}[phase]
        reason = ""
        if phase == "aborted" and st.end is not None and st.end.reason is not None:
            reason = f" ({html.escape(st.end.reason)})"
        detail = (
            f"missing {counts['missing']} · late {counts['late']} · censored {counts['censored']} · "
            f"FD &gt; {st.fd_threshold_mm:g} mm: {counts['high_motion']} · "
            f"{_fmt_saturation(saturation)} · "
            f"processing median {_fmt_ms(st.median_ms('processing_ms'))} · "
            f"end-to-end median {_fmt_ms(st.median_ms('e2e_ms'))} · "
            f"run {html.escape(st.run_id or '–')}"
        )
        cleaning = st.cleaning()
        if cleaning is not None:
            detail += " · " + _fmt_cleaning(cleaning)
        keys = st.keys
        trigger = f" (last {clock_time(keys['t_last_trigger'])})" if keys["t_last_trigger"] is not None else ""
        response = "–" if keys["last_response"] is None else (
            f"<b>{html.escape(keys['last_response'])}</b> at {clock_time(keys['t_last_response'])}"
            f" ({keys['n_responses']} in all)"
        )
        if st.expect_screen or keys["n_triggers"] or keys["n_responses"]:  # the keys come from the screen
            parts.append(f'triggers <b data-keys="triggers">{keys["n_triggers"]}</b>{trigger}')
            parts.append(f'last response <span data-keys="response">{response}</span>')
        folders = []
        if st.export_dir:
            folders.append(f'watching <code data-folder="export">{html.escape(st.export_dir)}</code>')
        if st.output_dir:
            folders.append(f'outputs to <code data-folder="output">{html.escape(st.output_dir)}</code>')
        waiting = ""
        if phase == "waiting":
            waiting = ('<br><span data-waiting="1">Waiting for the first volume' + (": " + " · ".join(folders) if folders
                       else " (the export folder is not known until rtnf's run message arrives)") + "</span>")
        elif folders:
            detail += " · " + " · ".join(folders)
        text = (
            f'<div class="rtnf-status phase-{phase}" data-phase="{phase}">'
            f'<span class="badge">{label}</span>{reason} ' + " · ".join(parts) + waiting +
            f'<br><span class="muted">{detail}</span></div>'
        )
        self._set("status", self.status, "text", text)
        status = {
            "phase": phase, "run_id": st.run_id, "n_volumes": n, "n_received": counts["volumes"],
            "last_index": None if latest is None else latest["index"],
            "condition": None if latest is None else latest["condition"],
            "alerts": [a.key for a in alerts], "counts": counts, "fd_threshold_mm": st.fd_threshold_mm,
            "keys": keys, "n_events": st.n_events, "saturation": saturation,
            "preview_index": None if st.preview is None else st.preview.index,
            "n_ratings": st.n_ratings, "rating_on_screen": st.rating_on_screen,
            "threshold": st.threshold, "n_blocks_scored": len(st.block_scores),
            "n_blocks_succeeded": sum(bool(b["success"]) for b in st.block_scores),
            "export_dir": st.export_dir, "output_dir": st.output_dir, "cleaning": _finite_only(cleaning),
        }
        self._set("status_tags", self.status, "tags", [json.dumps(status)])
        if alerts:
            alert_html = "".join(
                f'<div class="rtnf-alert rtnf-alert-{a.key} level-{a.level}" data-alert="{a.key}">{html.escape(a.text)}</div>'
                for a in alerts
            )
        else:
            alert_html = '<div class="rtnf-ok" data-alert="none">No alerts</div>'
        self._set("alerts", self.alerts, "text", f'<div class="rtnf-alerts">{alert_html}</div>')
        self._update_events()
        self._update_ratings()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _origins(host: str, port: int, extra: list[str] | None) -> list[str]:
    origins = {f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}
    if host in ("0.0.0.0", "::", ""):
        import socket

        origins.add(f"{socket.gethostname()}:{port}")
    return sorted(origins | set(extra or []))


def serve(
    rtnf_address: str = DEFAULT_ADDRESS,
    screen_address: str | None = DEFAULT_SCREEN_ADDRESS,
    host: str = "127.0.0.1",
    port: int = 5006,
    *,
    fd_threshold_mm: float = 0.5,
    screen_timeout_s: float = 3.0,
    rtnf_timeout_s: float = 3.0,
    allow_websocket_origin: list[str] | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the console until ``stop`` is set (or the process is interrupted).

    Parameters
    ----------
    rtnf_address : str
        rtnf's PUB address (``publish.address`` of the session config).
    screen_address : str or None
        The feedback screen's PUB address (``displayed`` acknowledgements and
        heartbeats); None when no screen is used (no screen alert then).
    host : str
        Address the web server binds: loopback by default. Anything else
        exposes the (read-only) page to the network.
    port : int
        HTTP port; 0 picks a free one (passed to ``on_ready``).
    fd_threshold_mm : float
        Framewise displacement above this, in millimetres, raises the
        high-motion alert.
    screen_timeout_s : float
        The screen counts as silent after this many seconds without a
        heartbeat.
    rtnf_timeout_s : float
        rtnf counts as silent after this many seconds without a message (at
        least three of the run message's ``heartbeat_s``).
    allow_websocket_origin : list of str, optional
        Extra ``host:port`` origins allowed to open the page (needed when the
        page is reached through another host name).
    stop : threading.Event, optional
        Set it to stop the server (from another thread or a signal handler).
    on_ready : callable, optional
        Called with the page's URL once the server listens.

    Raises
    ------
    OSError
        When the port cannot be bound.
    """
    stop = stop or threading.Event()
    if not port:
        port = free_port(host)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    io_loop = IOLoop.current()
    logging.getLogger("tornado.access").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    state = RunState(fd_threshold_mm=fd_threshold_mm, screen_timeout_s=screen_timeout_s, rtnf_timeout_s=rtnf_timeout_s,
                     expect_screen=bool(screen_address), t_start=time.time())
    messages: "queue.Queue[Message]" = queue.Queue()
    subscriber = Subscriber(rtnf_address, screen_address, messages)
    app = Application(FunctionHandler(lambda doc: ConsolePage(doc, state)))
    server = Server(
        {"/": app}, io_loop=io_loop, address=host, port=port,
        allow_websocket_origin=_origins(host, port, allow_websocket_origin),
    )
    subscriber.start()
    subscriber.ready.wait(5.0)

    def drain() -> None:
        for _ in range(10000):
            try:
                message = messages.get_nowait()
            except queue.Empty:
                break
            state.handle(*message)
        if stop.is_set() or not subscriber.is_alive():
            io_loop.stop()

    pump = PeriodicCallback(drain, DRAIN_MS)
    try:
        server.start()
        pump.start()
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{server.port}/"
        log.info("rtnf console at %s (rtnf %s, screen %s)", url, rtnf_address, screen_address or "none")
        if on_ready is not None:
            on_ready(url)
        io_loop.start()
    finally:
        pump.stop()
        server.stop()
        subscriber.stop()
        io_loop.close(all_fds=False)
        asyncio.set_event_loop(None)
        loop.close()
    if subscriber.error is not None:
        raise RuntimeError(f"the console's subscriber failed: {subscriber.error}") from subscriber.error
