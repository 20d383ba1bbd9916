"""The SVG charts of the HTML pages: valid XML, one mark per value, escaped text, and inputs with one value, none, or
missing ones (None, NaN, infinities)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from grpo_lightning.svg_plots import (
    PALETTE,
    Series,
    bar_chart,
    histogram,
    histogram_counts,
    line_chart,
    nice_ticks,
    tick_label,
)

SVG = "{http://www.w3.org/2000/svg}"
NAN, INF = float("nan"), float("inf")
XSS = "<script>alert('x')</script> & \"co\""


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg" and root.get("viewBox")
    return root


def elements(root: ET.Element, tag: str, cls: str | None = None) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if cls is None or e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{SVG}text")]


# ------------------------------------------------------------------------------------------------ ticks
@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [
        (0, 1, [0, 0.25, 0.5, 0.75, 1]),
        (0.13, 0.87, [0, 0.2, 0.4, 0.6, 0.8, 1]),
        (0, 90, [0, 25, 50, 75, 100]),
        (-0.3, 2.7, [-1, 0, 1, 2, 3]),
        (0, 0, [-1, -0.5, 0, 0.5, 1]),  # one value: a range around it
        (1, 0, [0, 0.25, 0.5, 0.75, 1]),  # given the wrong way round
        (0.1, 0.3, [0.1, 0.15, 0.2, 0.25, 0.3]),
    ],
)
def test_nice_ticks_cover_the_range_with_round_steps(low, high, ticks):
    assert nice_ticks(low, high) == pytest.approx(ticks)


@pytest.mark.parametrize(("low", "high"), [(0, NAN), (-INF, 1)])
def test_nice_ticks_refuse_a_range_that_is_not_finite(low, high):
    with pytest.raises(ValueError, match="not finite"):
        nice_ticks(low, high)


@pytest.mark.parametrize(
    ("ticks", "labels"),
    [
        ([0, 0.25, 0.5, 0.75, 1], ["0.00", "0.25", "0.50", "0.75", "1.00"]),
        ([0, 0.2, 0.4], ["0.0", "0.2", "0.4"]),
        ([0, 25, 50], ["0", "25", "50"]),
        ([0, 2.5, 5], ["0.0", "2.5", "5.0"]),
        ([0.1, 0.2, 0.30000000000000004], ["0.1", "0.2", "0.3"]),
    ],
)
def test_tick_labels_have_the_decimals_their_spacing_needs(ticks, labels):
    assert [tick_label(t, ticks) for t in ticks] == labels


# ------------------------------------------------------------------------------------------------ line chart
@pytest.mark.parametrize(
    ("values", "points", "segments"),
    [
        ([0.1, 0.5, 0.9], 3, 1),
        ([0.4], 1, 0),  # one logged step: one point, no line
        ([0.1, None, 0.5, 0.6], 3, 1),  # the lone first point has no segment
        ([0.1, 0.2, NAN, 0.5, 0.6], 4, 2),  # a gap breaks the line
        ([INF, 0.2, -INF], 1, 0),
    ],
)
def test_line_chart_draws_a_point_per_value_and_breaks_at_missing_ones(values, points, segments):
    xs = [10 * k for k in range(len(values))]
    root = parse(line_chart([Series("reward", values, xs=xs)], title="Reward", x_label="step"))
    assert len(elements(root, "circle", "point")) == points
    assert len(elements(root, "polyline")) == segments
    assert "no data" not in texts(root)


def test_line_chart_of_several_series_has_a_legend_colours_and_links():
    steps = [0, 10, 20]
    series = [
        Series("reward", [0.1, 0.5, 0.9], xs=steps, links=[f"#step={s}" for s in steps], notes=["4 groups"] * 3),
        Series("format", [0.0, 0.2, 0.4], xs=steps, links=[f"#step={s}" for s in steps]),
        Series("tag_count", [0.3, None, 0.6], xs=steps),
    ]
    root = parse(line_chart(series, title="Rewards", x_label="step", y_label="mean"))
    groups = elements(root, "g", "series")
    assert [g.get("data-series") for g in groups] == ["reward", "format", "tag_count"]
    assert [len(elements(g, "circle", "point")) for g in groups] == [3, 3, 2]
    assert {c.get("fill") for c in elements(groups[1], "circle", "point")} == {PALETTE[1]}
    links = [a.get("href") for a in elements(root, "a")]
    assert links == ["#step=0", "#step=10", "#step=20"] * 2  # the third series links nowhere
    assert len(elements(root, "g", "legend-item")) == 3 and {"reward", "format", "tag_count"} <= set(texts(root))
    tips = [t.text for c in elements(root, "circle", "point") for t in c.iter(f"{SVG}title")]
    assert tips[1] == "reward at 10: 0.5 (4 groups)" and len(tips) == 8
    assert "0" in texts(root) and "20" in texts(root) and "step" in texts(root)


def test_line_chart_with_one_series_has_no_legend_and_keeps_a_fixed_range():
    root = parse(line_chart([Series("fraction", [0.0, 0.0])], title="Zero spread", y_range=(0, 1)))
    assert not elements(root, "g", "legend-item")
    assert "1.00" in texts(root) and "0.00" in texts(root)  # the fixed range, though every value is 0


@pytest.mark.parametrize("series", [[], [Series("reward", [])], [Series("reward", [None, NAN], xs=[0, 1])]])
def test_line_chart_without_values_is_a_frame_that_says_so(series):
    root = parse(line_chart(series, title="Reward", x_label="step"))
    assert "no data" in texts(root) and not elements(root, "circle")


def test_line_chart_needs_an_x_per_value():
    with pytest.raises(ValueError, match="3 values but 2 xs"):
        line_chart([Series("reward", [1, 2, 3], xs=[0, 1])], title="Reward")


# ------------------------------------------------------------------------------------------------ bar chart
@pytest.mark.parametrize(
    ("raw", "normalized", "bars"),
    [
        ([0.5, 0.8, 0.3], [0.6, 0.9, 0.35], 6),
        ([0.5, None, 0.3], [0.6, NAN, 0.35], 4),  # an answer type without a value: no bar, not a zero bar
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], 6),  # zero is a value: a visible sliver
    ],
)
def test_bar_chart_draws_a_bar_per_value_in_groups(raw, normalized, bars):
    series = [Series("raw", raw, notes=["n=2"] * 3), Series("normalized", normalized)]
    root = parse(bar_chart(["all", "yes/no", "number"], series, title="Accuracy", y_range=(0, 1)))
    rects = elements(root, "rect", "bar")
    assert len(rects) == bars
    assert all(float(r.get("height")) > 0 for r in rects)
    assert {r.get("fill") for r in rects} == {PALETTE[0], PALETTE[1]}
    assert {"all", "yes/no", "number", "raw", "normalized"} <= set(texts(root))


def test_bar_heights_follow_the_values():
    root = parse(bar_chart(["a", "b"], [Series("accuracy", [0.25, 1.0])], title="Accuracy", y_range=(0, 1)))
    low, high = (float(r.get("height")) for r in elements(root, "rect", "bar"))
    assert high == pytest.approx(4 * low, rel=0.02)


@pytest.mark.parametrize(("categories", "values"), [([], []), (["a", "b"], [None, NAN])])
def test_bar_chart_without_values_is_a_frame_that_says_so(categories, values):
    root = parse(bar_chart(categories, [Series("accuracy", values)], title="Accuracy"))
    assert "no data" in texts(root) and not elements(root, "rect", "bar")


def test_bar_chart_needs_a_value_per_category():
    with pytest.raises(ValueError, match="1 values for 2 categories"):
        bar_chart(["a", "b"], [Series("accuracy", [0.5])], title="Accuracy")


# ------------------------------------------------------------------------------------------------ histogram
@pytest.mark.parametrize(
    ("values", "bins", "value_range", "counts"),
    [
        ([0.05, 0.15, 0.15, 0.95], 10, (0, 1), [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
        ([0.0, 1.0], 4, (0, 1), [1, 0, 0, 1]),  # the upper edge belongs to the last bin
        ([-3.0, 12.0], 2, (0, 10), [1, 1]),  # outside the range: the nearest end bin
        ([0.5, 0.5, 0.5], 3, None, [0, 3, 0]),  # equal values: a range around them
        ([1.0, 2.0, 3.0, 4.0], 3, None, [1, 1, 2]),
    ],
)
def test_histogram_counts(values, bins, value_range, counts):
    edges, found = histogram_counts(values, bins, value_range)
    assert found == counts and len(edges) == bins + 1 and sum(found) == len(values)
    assert edges == sorted(edges)


@pytest.mark.parametrize(
    ("values", "bars", "caption"),
    [
        ([0.1, 0.2, 0.2, 0.9], 10, "4 values"),
        ([0.3], 10, "1 value"),
        ([0.1, None, NAN, INF, 0.7], 10, "2 values, 3 missing"),
    ],
)
def test_histogram_draws_every_bin_and_counts_the_missing_values(values, bars, caption):
    root = parse(histogram(values, title="BLEU-4", x_label="BLEU-4", value_range=(0, 1)))
    rects = [r for r in elements(root, "rect") if r.find(f"{SVG}title") is not None]
    assert len(rects) == bars
    assert any(t.startswith(caption + ", mean ") for t in texts(root))
    counts = [int(r.find(f"{SVG}title").text.split(": ")[1].split(" of ")[0]) for r in rects]
    assert sum(counts) == len([v for v in values if v is not None and math.isfinite(v)])
    assert len(elements(root, "line", "mean")) == 1


@pytest.mark.parametrize("values", [[], [None, NAN]])
def test_histogram_without_values_is_a_frame_that_says_so(values):
    root = parse(histogram(values, title="CIDEr"))
    assert "no data" in texts(root) and not elements(root, "rect")


def test_histogram_needs_a_bin():
    with pytest.raises(ValueError, match="at least one bin"):
        histogram([0.1], title="CIDEr", bins=0)


# ------------------------------------------------------------------------------------------------ escaping
@pytest.mark.parametrize(
    "chart",
    [
        lambda: line_chart([Series(XSS, [1, 2], links=[XSS, None], notes=[XSS, XSS])], title=XSS, x_label=XSS),
        lambda: line_chart([Series(XSS, [1]), Series("b", [2])], title="t", y_label=XSS),
        lambda: bar_chart([XSS], [Series(XSS, [0.5], notes=[XSS]), Series("b", [0.2])], title=XSS, y_label=XSS),
        lambda: histogram([0.5], title=XSS, x_label=XSS, color='red" onload="x'),
    ],
)
def test_every_text_is_escaped(chart):
    svg = chart()
    root = parse(svg)  # an unescaped quote or angle bracket would not parse, or would add elements
    assert "<script" not in svg and not elements(root, "script")
    assert all(not name.startswith("on") for e in root.iter() for name in e.attrib)
    every_text = [t for e in root.iter() for t in (e.text, *e.attrib.values()) if t]
    assert any(XSS in t for t in every_text)  # kept, as text: escaped rather than dropped


@pytest.mark.parametrize("count", [1, 3, 7, 13, 200, 1968])
def test_histogram_counts_are_whole_numbers_on_an_axis_that_reaches_the_tallest_bin(count):
    root = parse(histogram([0.5] * count, title="BLEU-4", bins=1))
    labels = [e.text for e in root.iter(f"{SVG}text") if e.get("text-anchor") == "end"]  # the y axis' ticks
    assert all(label.isdigit() for label in labels) and int(labels[0]) == 0
    assert int(labels[-1]) >= count and 2 <= len(labels) <= 6
