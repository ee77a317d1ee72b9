"""Session fixtures for the browser tests: one JupyterLab server and one Chromium per test session.

The server serves a temporary copy of notebooks/ (at its root) and of the harness notebooks in
tests/browser/notebooks/ (under harness/). Each test module opens its notebook once in its own page
(see `open_run`), so the slow part (page load, kernel start, run all cells) happens once per notebook.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import labdriver  # noqa: E402
import labserver  # noqa: E402

SCREENSHOTS = Path(__file__).parent / "screenshots"
_skipped_for_chromium: list[str] = []


def browser_required() -> bool:
    """Whether a missing browser is a failure here: with PRUNELAB_REQUIRE_BROWSER=1 (.ci/run sets it,
    on any machine), in CI (CI set), or as root (where `make test` installs Chromium itself)."""
    return (os.environ.get("PRUNELAB_REQUIRE_BROWSER", "") not in ("", "0")
            or bool(os.environ.get("CI")) or os.geteuid() == 0)


def _no_browser(reason: str):
    """Fail where the browser tests must run (see `browser_required`); else skip loudly."""
    if browser_required():
        pytest.fail(f"browser tests cannot run: {reason}", pytrace=False)
    _skipped_for_chromium.append(reason)
    pytest.skip(f"BROWSER TESTS NOT RUN: {reason}")


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, through playwright), started once per session."""
    reason = labserver.chromium_missing_reason()
    if reason:
        _no_browser(reason)
    try:
        import playwright  # noqa: F401
    except ImportError:
        _no_browser("the playwright Python package is not installed (pip install -e '.[test]')")
    with labserver.chromium_browser() as b:
        yield b


@pytest.fixture(scope="session")
def lab(browser):
    """A private JupyterLab on a free port with a random token, started once per session.

    Depends on `browser` so that a missing Chromium is reported before a server is started for nothing.
    """
    folders = {"harness": Path(__file__).parent / "notebooks"}
    repo_notebooks = labserver.REPO_ROOT / "notebooks"
    if repo_notebooks.is_dir():
        folders[""] = repo_notebooks
    with labserver.lab_server(folders) as server:
        yield server


@pytest.fixture(scope="module")
def open_run(lab, browser):
    """Open a notebook in a fresh page, run all its cells, and close it (and its kernel) after the module.

    Usage: `nb = open_run("01-quickstart.ipynb", screenshots="quickstart")`. A screenshot of the
    page after the run is saved under tests/browser/screenshots/<screenshots>/, and one more when the
    module ends, for people to look at.
    """
    opened: list[tuple[labdriver.NotebookPage, Path, str]] = []

    def _open(notebook: str, screenshots: str, timeout_s: float = 150.0, wait_for: str | None = None):
        nb = labdriver.open_notebook(lab, browser, notebook)
        folder = SCREENSHOTS / screenshots
        stem = Path(notebook).stem
        opened.append((nb, folder, stem))
        nb.run_all(timeout_s=timeout_s)
        if wait_for:
            nb.wait_for(wait_for, timeout_s=timeout_s)
        nb.page.wait_for_timeout(500)  # let the last views finish drawing before the picture
        nb.screenshot(folder, f"{stem}-after-run")
        return nb

    yield _open
    for nb, folder, stem in opened:
        try:
            nb.screenshot(folder, f"{stem}-end")
        finally:
            nb.close()
    lab.shutdown_kernels()


def pytest_terminal_summary(terminalreporter):
    if _skipped_for_chromium:
        terminalreporter.write_sep("!", "BROWSER TESTS WERE SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"{_skipped_for_chromium[0]}")
        terminalreporter.write_line(
            "Nothing was checked in a real browser. Run `make test` as root to install Chromium."
        )
