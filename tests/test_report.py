"""The report: reader's order, one self-contained file, rounding, and (with Chromium) a real render."""

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cfjax.io import atomic_savefig  # noqa: E402
from cfjax.jobs import report  # noqa: E402


@pytest.mark.parametrize("v, want", [
    (0.97362, "0.974"), (13.446, "13.4"), (1399.3, "1,400"), (1.2e-05, "1.20e-05"), (0.0, "0"), (1.0, "1.00"),
    (-0.0312, "-0.0312"), (123456, "123,456"), (42, "42"), (True, "True"), (None, "None"), (float("nan"), "n/a"), (float("inf"), "inf"),
])
def test_fmt_number_three_significant_digits(v, want):
    assert report.fmt_number(v) == want


def _fig(path, seed):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.imshow(np.random.default_rng(seed).random((8, 8)))
    return atomic_savefig(fig, path)


@pytest.fixture()
def small_report(tmp_path):
    _fig(tmp_path / "figures" / "a.png", 0)
    _fig(tmp_path / "figures" / "b.png", 1)
    summary = {"method": "toy", "validity": 0.912345, "n_processes": 1, "backend": "cpu",
               "pairs": {"a->b": {"validity": 0.9, "l1": 0.1}, "b->a": {"validity": 0.2, "l1": 0.3}, "c->a": {"validity": None, "l1": None},
                         "a->c": {"validity": 0.5, "l1": 0.2}},
               "phase_wall_s": {"models": 12.34567}}
    figs = [("First figure", "figures/a.png", "look at the top row"), ("Second", "figures/b.png", "bars", "custom alt text")]
    path = report.write_report(tmp_path, summary, figs, "toy report", headline=[("method", "toy"), ("validity", 0.912345), ("skipped", None)])
    return path, summary


def test_report_order_embedding_and_tables(small_report):
    path, _ = small_report
    html = path.read_text()
    # a reader's order: headline, figures, per-pair table, then the collapsed run details
    pos = [html.index(s) for s in ("id='headline'", "<figure>", "id='pairs'", "<details")]
    assert pos == sorted(pos), pos
    head = html[pos[0]:pos[1]]
    assert "0.912" in head and "0.912345" not in head and "skipped" not in head  # rounded; None fields left out
    # self-contained: figures are data URIs, nothing is fetched by relative or absolute URL
    assert len(re.findall(r"<img src='data:image/png;base64,", html)) == 2
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)
    assert "<link" not in html and "<script src" not in html
    # accessibility: alt text everywhere (default "title: caption", or the figure's own), table headers
    alts = re.findall(r"alt='([^']*)'", html)
    assert alts == ["First figure: look at the top row", "custom alt text"]
    assert html.count("<th") >= 3
    # worst pairs first, missing values last
    rows = re.findall(r"<tr><td>([^<]+)</td>", html[pos[2]:pos[3]])
    assert rows == ["b-&gt;a", "a-&gt;c", "a-&gt;b", "c-&gt;a"]
    # run details keep every scalar (rounded) and the dicts of scalars
    details = html[pos[3]:]
    assert "n_processes" in details and "phase_wall_s" in details and "12.3" in details


def test_report_missing_figure_is_said_not_linked(tmp_path):
    p = report.write_report(tmp_path, {"a": 1}, [("gone", "figures/none.png", "c")], "t")
    html = p.read_text()
    assert "is missing" in html and "<img" not in html


def _need(open_in_browser):
    if open_in_browser is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium; .ci/run does)")
    return open_in_browser


def test_report_renders_in_chromium(small_report, open_in_browser):
    open_in_browser = _need(open_in_browser)
    path, _ = small_report
    seen = open_in_browser(path, "report_unit")
    assert seen["images"] == 2 and seen["decoded"] == 2 and seen["missing_alt"] == 0
    assert seen["resources"] == []
    assert seen["headline_top"] < seen["first_figure_top"] < seen["viewport_height"]
    assert "validity" in seen["headline_text"] and seen["sortable_tables"] == 1
    assert seen["page_width"] <= seen["viewport_width"], "the page scrolls sideways"
    assert seen["screenshot"]
    shot = plt.imread(seen["screenshot"])
    assert shot.shape[0] >= 600 and float(np.std(shot)) > 0.01  # something is drawn


def test_browser_probe_catches_broken_and_external_images(small_report, open_in_browser, tmp_path):
    """The browser check can fail: a corrupt embedded PNG does not decode, an external image is
    a resource request."""
    open_in_browser = _need(open_in_browser)
    path, _ = small_report
    html = path.read_text()
    bad = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]{40}", "data:image/png;base64,AAAA", html, count=1)
    bad = bad.replace("</section>", "<img alt='x' src='http://example.invalid/x.png'></section>", 1)
    p = tmp_path / "bad.html"
    p.write_text(bad)
    seen = open_in_browser(p, "report_broken")
    assert seen["images"] == 3 and seen["decoded"] <= 1
    assert any("example.invalid" in r for r in seen["resources"])
