"""Small SVG charts for the HTML pages: pure functions from numbers to one ``<svg>`` element as a string.

The pages embed these strings as they are, so a chart needs no script and fetches nothing; each is also a valid
standalone SVG document (``xmlns`` set, every attribute quoted, every text escaped), which the tests parse as XML.
Three kinds: :func:`line_chart` (several series over a numeric x, points that can link somewhere),
:func:`bar_chart` (grouped bars over categories) and :func:`histogram` (the distribution of one list of values).

Colours follow Okabe and Ito's palette for colour-blind readers ("Color Universal Design", 2008); line series
differ by dash pattern too, so that they stay apart in grey print. Every point and bar has a ``<title>``, which
browsers show as a tooltip. A missing value (``None``, NaN or an infinity) is skipped: a line breaks there, a bar is
left out, and a histogram counts it in its caption rather than in a bin. An input with no values at all gives the
chart's frame with "no data" in it rather than an error, so that a page always renders.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Okabe and Ito's colour-blind-safe colours, in the order series take them (their yellow is left out: too pale on
#: white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

#: The dash pattern of each line series, in the order series take them (solid first).
DASHES = ("", "6 3", "2 3", "8 3 2 3")

#: The font of every text in a chart, and its size in pixels.
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
FONT_SIZE = 11

_AXIS = "#444"
_GRID = "#e4e4e4"
_CHAR_WIDTH = 0.58 * FONT_SIZE  # an estimate of a character's width, to lay out the legend and the labels
_LEFT, _RIGHT, _TOP, _BOTTOM = 54, 14, 26, 40  # margins around the plot area, legend rows excluded


@dataclass(frozen=True)
class Series:
    """One named list of values.

    Attributes:
        name: shown in the legend and the tooltips.
        values: the y values; None or NaN is a missing value.
        xs: a line chart's x of each value (None: 0, 1, 2, ...); a bar chart ignores it.
        links: where each point or bar links (an address; None: it links nowhere).
        notes: more text for each value's tooltip (a count of samples, say).
    """

    name: str
    values: Sequence[float | None]
    xs: Sequence[float] | None = None
    links: Sequence[str | None] | None = None
    notes: Sequence[str] | None = None


def is_value(value: float | None) -> bool:
    """Whether ``value`` is a number to draw: not None, NaN or infinite."""
    return value is not None and math.isfinite(float(value))


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) that cover ``[low, high]``.

    The first tick is at or below ``low`` and the last at or above ``high``; ``low == high`` gets a range around it.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"tick range [{low}, {high}] is not finite")
    low, high = min(low, high), max(low, high)
    if low == high:
        low, high = (low - 1, high + 1) if low == 0 else (low - abs(low) / 2, high + abs(high) / 2)
    raw_step = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw_step)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    return [_clean(k * step) for k in range(first, last + 1)]


def tick_label(value: float, ticks: Sequence[float]) -> str:
    """``value`` written with as many decimals as the spacing of ``ticks`` needs (0.25 -> "0.25", 20 -> "20")."""
    step = min((abs(b - a) for a, b in zip(ticks, ticks[1:], strict=False) if b != a), default=1.0)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    if step < 10 and math.isclose(step / 10 ** math.floor(math.log10(step) + 1e-9), 2.5):
        decimals += 1
    if abs(value) >= 10_000:
        return f"{value:.3g}"
    return f"{value:.{decimals}f}"


def value_label(value: float) -> str:
    """A value in a tooltip or above a bar: four significant digits."""
    return f"{value:.4g}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    width: int = 480,
    height: int = 260,
    y_range: tuple[float | None, float | None] = (None, None),
) -> str:
    """Lines over a numeric x, one per series, with a point at each value (``<title>`` tooltip, optional link).

    Args:
        series: the lines; each needs ``xs`` of the length of its ``values`` (default 0, 1, ...).
        title: the chart's title, above it.
        x_label, y_label: the axes' names.
        width, height: the size in pixels (the page may shrink it).
        y_range: the y axis' fixed low and high (None: from the values), e.g. ``(0, 1)`` for a fraction.
    """
    points = [_points(s) for s in series]
    legend, legend_height = _legend([s.name for s in series], width, line=True) if len(series) > 1 else ("", 0)
    frame = _Frame(width, height, legend_height)
    found = [(x, y) for line in points for x, y in line if is_value(y)]
    if not found:
        return _svg(width, height, title, legend + frame.empty(title, x_label, y_label))
    xs, ys = [x for x, _ in found], [y for _, y in found]
    x_range, x_ticks = _x_axis(xs)
    y_low = min(ys) if y_range[0] is None else y_range[0]
    y_high = max(ys) if y_range[1] is None else y_range[1]
    y_ticks = nice_ticks(y_low, y_high)
    frame.scale(x_range, (y_ticks[0], y_ticks[-1]), inset=8)
    parts = [frame.axes(title, x_label, y_label, x_ticks, y_ticks), legend]
    for index, (line, spec) in enumerate(zip(points, series, strict=True)):
        parts.append(_line(frame, line, spec, PALETTE[index % len(PALETTE)], DASHES[index % len(DASHES)]))
    return _svg(width, height, title, "".join(parts))


def bar_chart(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    y_label: str = "",
    width: int = 480,
    height: int = 260,
    y_range: tuple[float | None, float | None] = (None, None),
) -> str:
    """Grouped bars: for each category, one bar per series (``series[i].values[j]`` is category ``j``'s).

    Args:
        categories: the groups along the x axis.
        series: the bars of each group, in colour order; each has one value per category.
        title: the chart's title, above it.
        y_label: the y axis' name.
        width, height: the size in pixels (the page may shrink it).
        y_range: the y axis' fixed low and high (None: from 0, or below it, to the values).

    Raises:
        ValueError: a series whose number of values is not the number of categories.
    """
    for spec in series:
        if len(spec.values) != len(categories):
            raise ValueError(f"series {spec.name!r} has {len(spec.values)} values for {len(categories)} categories")
    legend, legend_height = _legend([s.name for s in series], width, line=False) if len(series) > 1 else ("", 0)
    frame = _Frame(width, height, legend_height)
    values = [float(v) for s in series for v in s.values if is_value(v)]
    if not values:
        return _svg(width, height, title, legend + frame.empty(title, "", y_label))
    y_low = min(0.0, *values) if y_range[0] is None else y_range[0]
    y_high = max(0.0, *values) if y_range[1] is None else y_range[1]
    y_ticks = nice_ticks(y_low, y_high)
    frame.scale((0, len(categories)), (y_ticks[0], y_ticks[-1]))
    parts = [frame.axes(title, "", y_label, [], y_ticks), legend]
    slot = frame.plot_width / len(categories)
    bar = slot * 0.8 / len(series)
    for j, category in enumerate(categories):
        parts.append(_text(frame.x(j + 0.5), frame.bottom + 16, _fit(category, slot), anchor="middle"))
        for i, spec in enumerate(series):
            left = frame.x(j) + slot * 0.1 + i * bar
            parts.append(_bar(frame, spec, j, left, bar, PALETTE[i % len(PALETTE)], f"{spec.name} · {category}"))
    return _svg(width, height, title, "".join(parts))


def histogram(
    values: Sequence[float | None],
    *,
    title: str,
    x_label: str = "",
    bins: int = 10,
    value_range: tuple[float, float] | None = None,
    color: str = PALETTE[0],
    width: int = 320,
    height: int = 220,
) -> str:
    """How ``values`` spread: counts in ``bins`` equal bins over ``value_range`` (default: the values' own range),
    and a dashed line at their mean; the caption counts the values (and the missing ones, which are in no bin) and
    gives the mean.

    Raises:
        ValueError: ``bins`` below 1.
    """
    if bins < 1:
        raise ValueError(f"a histogram needs at least one bin, got {bins}")
    finite = [float(v) for v in values if is_value(v)]
    missing = len(values) - len(finite)
    caption = f"{len(finite)} value{'s' * (len(finite) != 1)}" + (f", {missing} missing" if missing else "")
    frame = _Frame(width, height, 14)  # room for the caption's line under the title
    if not finite:
        return _svg(width, height, title, frame.empty(title, x_label, "count", caption))
    mean = sum(finite) / len(finite)
    caption += f", mean {value_label(mean)}"
    edges, counts = histogram_counts(finite, bins, value_range)
    x_ticks = nice_ticks(edges[0], edges[-1])
    x_ticks = [t for t in x_ticks if edges[0] - 1e-9 <= t <= edges[-1] + 1e-9] or [edges[0], edges[-1]]
    y_ticks = _count_ticks(max(counts))
    frame.scale((edges[0], edges[-1]), (y_ticks[0], y_ticks[-1]))
    parts = [frame.axes(title, x_label, "count", x_ticks, y_ticks, caption)]
    for low, high, count in zip(edges, edges[1:], counts, strict=False):
        tip = f"{value_label(low)} to {value_label(high)}: {count} of {len(finite)}"
        left, right = frame.x(low), frame.x(high)
        top = frame.y(count)
        parts.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left - 1, 0.5):.1f}" '
            f'height="{frame.y(0) - top:.1f}" fill="{_e(color)}"><title>{_e(tip)}</title></rect>'
        )
    x = frame.x(min(max(mean, edges[0]), edges[-1]))
    parts.append(
        f'<line class="mean" x1="{x:.1f}" y1="{frame.top:.1f}" x2="{x:.1f}" y2="{frame.bottom:.1f}" stroke="{_AXIS}" '
        f'stroke-dasharray="4 3"><title>{_e(f"mean {value_label(mean)}")}</title></line>'
    )
    return _svg(width, height, title, "".join(parts))


def histogram_counts(
    values: Sequence[float], bins: int, value_range: tuple[float, float] | None = None
) -> tuple[list[float], list[int]]:
    """The ``bins + 1`` edges and ``bins`` counts of finite ``values``; the last bin includes its upper edge, and a
    value outside ``value_range`` is counted in the nearest end bin. Equal values get a range of width 1 around them.
    """
    low, high = value_range if value_range is not None else (min(values), max(values))
    if low == high:
        low, high = low - 0.5, high + 0.5
    width = (high - low) / bins
    edges = [_clean(low + k * width) for k in range(bins)] + [high]
    counts = [0] * bins
    for value in values:
        counts[min(max(int((value - low) / width), 0), bins - 1)] += 1
    return edges, counts


# ------------------------------------------------------------------------------------------------ internals
class _Frame:
    """The plot area of a chart inside its margins, and the mapping from data to pixels once scaled."""

    def __init__(self, width: int, height: int, legend_height: int):
        self.left, self.right = _LEFT, width - _RIGHT
        self.top, self.bottom = _TOP + legend_height, height - _BOTTOM
        self.plot_width = self.right - self.left
        self.x_low, self.x_high, self.y_low, self.y_high = 0.0, 1.0, 0.0, 1.0
        self.inset = 0.0

    def scale(self, x_range: tuple[float, float], y_range: tuple[float, float], inset: float = 0.0) -> None:
        """Map the ranges to the plot area's edges, x ``inset`` pixels inside them (so that a point at either end
        clears the axis)."""
        (self.x_low, self.x_high), (self.y_low, self.y_high) = x_range, y_range
        self.inset = inset

    def x(self, value: float) -> float:
        span = self.plot_width - 2 * self.inset
        return self.left + self.inset + (value - self.x_low) / ((self.x_high - self.x_low) or 1) * span

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y_low) / ((self.y_high - self.y_low) or 1) * (self.bottom - self.top)

    def axes(self, title, x_label, y_label, x_ticks, y_ticks, caption: str = "") -> str:
        """The title, the grid at the y ticks, both axes with their ticks and names, and an optional caption."""
        parts = [_text(self.left - 46, 15, title, weight="600", size=FONT_SIZE + 2)]
        for tick in y_ticks:
            y = self.y(tick)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" stroke="{_GRID}"/>')
            parts.append(_text(self.left - 6, y + 4, tick_label(tick, y_ticks), anchor="end"))
        for tick in x_ticks:
            x = self.x(tick)
            tick_mark = f'<line x1="{x:.1f}" y1="{self.bottom}" x2="{x:.1f}" y2="{self.bottom + 4}" stroke="{_AXIS}"/>'
            parts.append(tick_mark)
            parts.append(_text(x, self.bottom + 16, tick_label(tick, x_ticks), anchor="middle"))
        parts.append(
            f'<path d="M{self.left} {self.top}V{self.bottom}H{self.right}" fill="none" stroke="{_AXIS}"/>'
            + _text((self.left + self.right) / 2, self.bottom + 32, x_label, anchor="middle")
            + _text(self.left - 46, 30, caption, fill="#666")
        )
        if y_label:
            middle = (self.top + self.bottom) / 2
            parts.append(_text(12, middle, y_label, anchor="middle", transform=f"rotate(-90 12 {middle:.1f})"))
        return "".join(parts)

    def empty(self, title: str, x_label: str, y_label: str, caption: str = "") -> str:
        """The frame of a chart without values: its axes and names, and "no data" in the middle."""
        middle = _text((self.left + self.right) / 2, (self.top + self.bottom) / 2, "no data", anchor="middle")
        return self.axes(title, x_label, y_label, [], [], caption) + middle


def _points(spec: Series) -> list[tuple[float, float | None]]:
    xs = list(range(len(spec.values))) if spec.xs is None else list(spec.xs)
    if len(xs) != len(spec.values):
        raise ValueError(f"series {spec.name!r} has {len(spec.values)} values but {len(xs)} xs")
    return [(float(x), float(y) if is_value(y) else None) for x, y in zip(xs, spec.values, strict=True)]


def _line(frame: _Frame, points: list[tuple[float, float | None]], spec: Series, color: str, dash: str) -> str:
    """A series' polyline, broken where a value is missing, and its points (tooltip, link) on top."""
    runs: list[list[str]] = [[]]
    for x, y in points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append(f"{frame.x(x):.1f},{frame.y(y):.1f}")
    dashes = f' stroke-dasharray="{dash}"' if dash else ""
    parts = [
        f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="2"{dashes}/>'
        for run in runs
        if len(run) > 1
    ]
    for k, (x, y) in enumerate(points):
        if y is None:
            continue
        note = f" ({spec.notes[k]})" if spec.notes and spec.notes[k] else ""
        tip = f"{spec.name} at {value_label(x)}: {value_label(y)}{note}"
        dot = (
            f'<circle class="point" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3.5" fill="{color}" '
            f'stroke="#fff" stroke-width="1"><title>{_e(tip)}</title></circle>'
        )
        parts.append(_linked(dot, spec.links[k] if spec.links else None))
    return f'<g class="series" data-series="{_e(spec.name)}">{"".join(parts)}</g>'


def _bar(frame: _Frame, spec: Series, j: int, left: float, width: float, color: str, name: str) -> str:
    value = spec.values[j]
    if not is_value(value):
        return ""
    top, base = frame.y(max(float(value), 0.0)), frame.y(min(float(value), 0.0))
    note = f" ({spec.notes[j]})" if spec.notes and spec.notes[j] else ""
    rect = (
        f'<rect class="bar" x="{left:.1f}" y="{top:.1f}" width="{max(width - 1, 0.5):.1f}" '
        f'height="{max(base - top, 0.5):.1f}" fill="{color}"><title>{_e(f"{name}: {value_label(float(value))}{note}")}'
        "</title></rect>"
    )
    label = _text(left + width / 2, top - 3, value_label(float(value)), anchor="middle", size=FONT_SIZE - 1)
    return _linked(rect + (label if width >= 22 else ""), spec.links[j] if spec.links else None)


def _legend(names: Sequence[str], width: int, line: bool) -> tuple[str, int]:
    """The legend's items in rows under the title (a short line or a square in each series' colour), and its
    height."""
    parts, x, row = [], float(_LEFT), 0
    for index, name in enumerate(names):
        item_width = 26 + len(name) * _CHAR_WIDTH
        if x + item_width > width - _RIGHT and x > _LEFT:
            x, row = float(_LEFT), row + 1
        y = _TOP + 4 + row * 16
        color, dash = PALETTE[index % len(PALETTE)], DASHES[index % len(DASHES)]
        if line:
            dashes = f' stroke-dasharray="{dash}"' if dash else ""
            mark = (
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x + 18:.1f}" y2="{y:.1f}" stroke="{color}" '
                f'stroke-width="2"{dashes}/>'
            )
        else:
            mark = f'<rect x="{x + 4:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="{color}"/>'
        parts.append(f'<g class="legend-item">{mark}{_text(x + 22, y + 4, name)}</g>')
        x += item_width + 10
    return "".join(parts), (row + 1) * 16 + 6


def _linked(element: str, href: str | None) -> str:
    return element if href is None else f'<a href="{_e(href)}">{element}</a>'


def _text(
    x: float,
    y: float,
    text: str,
    anchor: str = "start",
    size: int = FONT_SIZE,
    fill: str = _AXIS,
    weight: str = "normal",
    transform: str | None = None,
) -> str:
    if not text:
        return ""
    rotate = "" if transform is None else f' transform="{_e(transform)}"'
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" text-anchor="{anchor}" '
        f'fill="{fill}"{rotate}>{_e(text)}</text>'
    )


def _svg(width: int, height: int, title: str, content: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}" font-family="{_e(FONT)}">'
        f"<title>{_e(title)}</title>{content}</svg>"
    )


def _fit(text: str, room: float) -> str:
    """``text`` cut with an ellipsis to about ``room`` pixels."""
    most = max(int(room / _CHAR_WIDTH), 2)
    return text if len(text) <= most else text[: most - 1] + "…"


def _x_axis(xs: Sequence[float]) -> tuple[tuple[float, float], list[float]]:
    """A line chart's x range, from the first x to the last (one x: centred in a range of 2), and its ticks: round
    values inside it, whole numbers only when every x is one (steps)."""
    low, high = min(xs), max(xs)
    if low == high:
        return (low - 1, high + 1), [low]
    ticks = [t for t in nice_ticks(low, high) if low - 1e-9 <= t <= high + 1e-9]
    if all(float(x).is_integer() for x in xs):
        ticks = [t for t in ticks if float(t).is_integer()] or [low, high]
    return (low, high), ticks


def _count_ticks(most: int) -> list[float]:
    """Ticks for counts from 0 to at least ``most``: whole numbers in steps of 1, 2 or 5 times a power of ten,
    about four of them."""
    most = max(most, 1)
    step = next(m * 10**k for k in range(20) for m in (1, 2, 5) if m * 10**k * 4 >= most)
    return [float(step * k) for k in range(math.ceil(most / step) + 1)]


def _clean(value: float) -> float:
    """``value`` without floating-point dust (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


__all__ = [
    "DASHES",
    "PALETTE",
    "Series",
    "bar_chart",
    "histogram",
    "histogram_counts",
    "is_value",
    "line_chart",
    "nice_ticks",
    "tick_label",
    "value_label",
]
