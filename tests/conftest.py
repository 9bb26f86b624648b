"""Test setup: 4 simulated CPU devices (set before JAX is imported), shared fixtures.

Single-device behaviour is tested by building meshes over ``jax.devices()[:1]``; the
device-count invariance tests compare those with all 4 (test_determinism spawns 1- and 8-device
processes). 4, not 8: every device is a thread, and on a 2-core CI box 8 of them made each
sharded chunk of the job tests ~1.6x slower than 4 (a smoke global attack's latent phase 16 s
vs 10 s).
"""

import os

# The suite compiles hundreds of small programs and runs most of them a few times, so XLA:CPU's
# LLVM optimisation costs more than it saves: -O0 cuts 27-31% of the wall time of the 128 px
# tests (BUILD_NOTES "Test suite time"). Results agree with the default level to round-off (the
# tests' tolerances); CFJAX_TEST_XLA_EXTRA="" runs the suite at XLA's default. Processes the tests
# spawn get the same flags (tests/xla_env.py).
os.environ.setdefault("CFJAX_TEST_XLA_EXTRA", "--xla_backend_optimization_level=0")
from xla_env import with_devices  # noqa: E402

os.environ.setdefault("XLA_FLAGS", with_devices(4))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

# XLA's persistent compilation cache, one fresh folder per pytest run (set by the controller before
# the xdist workers start, so both workers share it), inherited by the CLI subprocesses the tests spawn: a restarted `cfjax global` (the kill and
# resume tests) and the many tests that build the same smoke programs load them instead of
# compiling again. Entries are keyed by the program's HLO, so a hit is the same executable.
# CFJAX_TEST_XLA_CACHE=0 turns it off; a JAX_COMPILATION_CACHE_DIR already set is respected.
if os.environ.get("CFJAX_TEST_XLA_CACHE", "1") != "0" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _xla_cache = tempfile.mkdtemp(prefix="cfjax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _xla_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _xla_cache, True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mnist_small():
    """A class-balanced 1,000/200 slice of the real MNIST-5k sample."""
    from cfjax import data as cdata

    tr = cdata.load("mnist5k", "train")
    te = cdata.load("mnist5k", "test")
    rng = np.random.default_rng(0)
    itr = np.sort(rng.choice(len(tr), 1000, replace=False))
    ite = np.sort(rng.choice(len(te), 200, replace=False))
    return cdata.subset(tr, itr), cdata.subset(te, ite)


# ------------------------------------------------------------------ headless Chromium (report checks)

_PROBE = """<pre id='cfjax-probe'></pre><script>
window.addEventListener('load', function () {
  var im = Array.prototype.slice.call(document.images);
  var head = document.getElementById('headline'), fig = document.querySelector('figure img');
  var top = function (e) { return e ? e.getBoundingClientRect().top + window.scrollY : null; };
  document.getElementById('cfjax-probe').textContent = JSON.stringify({
    images: im.length,
    decoded: im.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    missing_alt: im.filter(function (i) { return !i.alt; }).length,
    resources: performance.getEntriesByType('resource').map(function (e) { return e.name; }),
    headline_top: top(head), first_figure_top: top(fig), viewport_height: window.innerHeight,
    page_width: document.documentElement.scrollWidth, viewport_width: window.innerWidth,
    headline_text: head ? head.textContent : null,
    sortable_tables: document.querySelectorAll('table.sortable').length
  });
});
</script>"""


def _chromium():
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _artifact_dir():
    from pathlib import Path

    d = Path(os.environ.get("CFJAX_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def open_in_browser(tmp_path_factory):
    """``open_in_browser(html_path, name) -> dict``: copy ``html_path`` ALONE to an empty folder
    (no figures/ beside it), load it in headless Chromium with every network lookup failing, and
    return what the page saw after ``load``: images and how many decoded, resource requests,
    the layout positions of the headline and the first figure, the viewport height, the page's
    scroll width vs the viewport width (no horizontal scrolling). A screenshot
    (1280x900) is kept as ``test-artifacts/<name>.png`` (``$CFJAX_TEST_ARTIFACTS``). ``None``
    when no Chromium is installed (``.ci/run`` installs Debian's ``chromium``): the dedicated
    browser tests then skip with that reason."""
    import json
    import re
    import shutil
    import subprocess

    exe = _chromium()
    if exe is None:  # tests that only add a browser check to other work go on; test_report.py skips
        return None
    flags = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--window-size=1280,900"]

    def run(html_path, name: str) -> dict:
        d = tmp_path_factory.mktemp("browser")
        page = d / "report.html"
        shutil.copy(html_path, page)  # alone: a relative figure link would not resolve
        text = page.read_text()
        probe = d / "probe.html"
        probe.write_text(text.replace("</body>", _PROBE + "</body>") if "</body>" in text else text + _PROBE)
        dom = subprocess.run(flags + ["--virtual-time-budget=5000", "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
        m = re.search(r"<pre id=\"cfjax-probe\">(.*?)</pre>", dom.stdout, re.S)
        assert m, f"the page did not finish loading in Chromium (rc {dom.returncode}): {dom.stderr[-800:]}"
        import html as _html

        seen = json.loads(_html.unescape(m.group(1)))
        shot = _artifact_dir() / f"{name}.png"
        subprocess.run(flags + [f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
        seen["screenshot"] = str(shot) if shot.is_file() else None
        return seen

    return run



# Module-scoped fixtures that train models or run whole jobs (tens of seconds each).
_COSTLY_MODULE_FIXTURES = {"attack_shards", "mirror_shards", "smoke_run", "trained", "tiny_clf", "tiny_classifier", "runs"}


def pytest_collection_modifyitems(config, items):
    """Under xdist's ``--dist loadgroup`` (``make test``), the tests of a module that share a
    costly module-scoped fixture all run on one worker, so the fixture is built once rather than
    once per worker that happens to draw one of them. Other tests are spread as usual."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is not None and any(name in _COSTLY_MODULE_FIXTURES and defs[-1].scope == "module"
                                    for name, defs in info.name2fixturedefs.items()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
