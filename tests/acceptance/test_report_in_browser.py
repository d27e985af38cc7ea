"""The demo's report.html as a person sees it: headless Chromium loads it with no console error
and no uncaught exception, and every plotly figure renders (an SVG per figure in the DOM after
the scripts ran). Runs where Chromium is installed (Debian package ``chromium``)."""

import re
import shutil
import subprocess

import pytest

BROWSER = next(
    (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="apt install chromium")
#: put before the page's own scripts: console.error/warn and uncaught errors become tagged lines
#: of Chromium's console log (which does not say a message's level)
_TRAP = (
    "<script>for (const k of ['error', 'warn']) { const f = console[k]; console[k] = (...a) => "
    "f('TLMM-CONSOLE-' + k + ': ' + a.join(' ')); }"
    "window.addEventListener('error', e => console.log('TLMM-CONSOLE-uncaught: ' + e.message));"
    "</script>"
)


def load_in_browser(page, tmp_path):
    """(DOM after the scripts ran, Chromium's console log) of ``page``."""
    trapped = tmp_path / "trapped.html"
    trapped.write_text(page.read_text().replace("<head>", "<head>" + _TRAP, 1))
    run = subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", "--virtual-time-budget=10000", "--dump-dom", trapped.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return run.stdout, run.stderr


@needs_browser
def test_the_demo_report_loads_without_errors_and_draws_every_figure(lm_dirs, tmp_path):
    from helpers import build_model

    from transformer_lens_mm.pipelines.demo import DemoConfig, run_demo

    model = build_model(lm_dirs["llama"], "bridge")
    config = DemoConfig(
        n_scenes=4, photos=False, ks=(0, 2, 8), cross_ks=(2,), n_random=1, n_cards=2,
        n_ablation_captions=1, batch_size=4, max_new_tokens=6, n_selectivity=1,
    )  # fmt: skip
    run_demo(tmp_path / "demo", config, model=model, verbose=False)
    page = tmp_path / "demo" / "report.html"
    dom, log = load_in_browser(page, tmp_path)
    assert "TLMM-CONSOLE" not in log, [line for line in log.splitlines() if "TLMM" in line]
    assert "Uncaught" not in log
    figures = len(re.findall(r'class="plotly-graph-div"', page.read_text()))
    assert figures >= 3
    assert dom.count('class="main-svg"') >= figures  # every figure drew its SVG
    # the page is built for reading: the headline panel first, tables folded
    assert dom.index('class="tiles"') < dom.index('class="cards"')
    assert dom.count("<details>") >= 5


@needs_browser
def test_the_check_catches_a_broken_page(tmp_path):
    """The browser check can fail: a page whose script throws is caught."""
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><script>console.error('x'); nope();</script>")
    _, log = load_in_browser(page, tmp_path)
    assert "TLMM-CONSOLE-error: x" in log and "TLMM-CONSOLE-uncaught" in log
