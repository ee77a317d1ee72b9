"""A private JupyterLab server and headless Chromium for the browser tests and
bench/browser_latency.py: started on a free port with this interpreter as its kernel, a token,
no news toast, and its log read for errors raised in widget handlers. Pages are in labdriver.py."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PRUNELAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The "get notified about Jupyter news?" toast covers widgets in screenshots and would ask the network.
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}

# Lines a kernel writes to the server's log when a widget observer (a comm message handler) raised:
# such errors never reach a cell output, so they are read from the log.
SERVER_LOG_ERROR = re.compile(r"Traceback \(most recent call last\)|Exception in comm_msg|Exception in comm_open")



class LabError(RuntimeError):
    """The browser harness could not do what a person would do (server down, notebook never ran...)."""


def chromium_missing_reason() -> str | None:
    """Why the browser tests cannot run here, or None when Chromium is installed."""
    if Path(CHROMIUM).exists() or shutil.which(CHROMIUM):
        return None
    return (
        f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
        "(make test does it as root)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A running private JupyterLab: its address, token, notebook folder and log."""

    port: int
    token: str
    root_dir: Path
    log_path: Path
    proc: subprocess.Popen
    app: str = "lab"  # "lab" (JupyterLab) or "notebook" (Jupyter Notebook 7)
    _log_offset: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str, workspace: str) -> str:
        """The address that opens `notebook` in a fresh, private workspace (no tabs left over);
        in Notebook 7, its page (one notebook per page, no workspaces)."""
        if self.app == "notebook":
            return f"{self.base}/notebooks/{notebook}?token={self.token}"
        return f"{self.base}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(
            f"{self.base}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Stop every kernel: each page's kernel would otherwise keep running on the shared cores."""
        for session in self.api("/api/sessions"):
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mark_log(self) -> None:
        """Remember where the log ends, so new_log_errors() reports only what happened after."""
        self._log_offset = self.log_path.stat().st_size

    def new_log_errors(self) -> list[str]:
        """Tracebacks the kernels or the server wrote to the log since mark_log()."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            text = f.read().decode(errors="replace")
        if not SERVER_LOG_ERROR.search(text):
            return []
        return [text[m.start() : m.start() + 2000] for m in SERVER_LOG_ERROR.finditer(text)][:3]


def _write_kernelspec(data_dir: Path) -> None:
    # This interpreter's ipykernel, by absolute path: never a system python or a user's kernelspec.
    spec_dir = data_dir / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (prunelab tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


@contextmanager
def lab_server(notebooks: dict[str, Path], startup_timeout: float = 90.0, app: str = "lab"):
    """Start JupyterLab (or, with ``app="notebook"``, Jupyter Notebook 7) on a free local port with
    a random token; stop it on exit.

    `notebooks` maps a folder name under the server's root to a source folder, which is copied
    (the tests never write into the repository). Config, data, settings, workspaces and IPython
    profile all live in a temporary folder, so a user's own Jupyter set-up cannot leak in.
    """
    tmp = Path(tempfile.mkdtemp(prefix="prunelab-lab-"))
    root = tmp / "root"
    root.mkdir()
    for name, src in notebooks.items():
        dest = root / name if name else root
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    data_dir = tmp / "data"
    _write_kernelspec(data_dir)
    app_settings = tmp / "app-settings"
    app_settings.mkdir()
    (app_settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES))

    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_DATA_DIR=str(data_dir),
        JUPYTER_PATH=str(data_dir),  # searched before the user's and the venv's kernelspecs
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        IPYTHONDIR=str(tmp / "ipython"),
        # The kernel imports this checkout's prunelab, whatever is installed.
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    token = secrets.token_hex(24)
    log_path = tmp / "server.log"
    proc = port = None
    for _attempt in range(3):  # a free port can be taken between our check and the server's bind
        port = _free_port()
        cls = "JupyterNotebookApp" if app == "notebook" else "LabApp"
        cmd = [
            sys.executable, "-m", "jupyter", app, "--no-browser",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
            "--ServerApp.allow_root=True", f"--{cls}.expose_app_in_browser=True",
            # Notebook 7 keeps its own settings schemas in its app settings dir: it gets no overrides
            *([f"--LabApp.app_settings_dir={app_settings}",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"] if app == "lab" else []),
            "--MappingKernelManager.default_kernel_name=python3",
            "--KernelSpecManager.ensure_native_kernel=False",
        ]  # fmt: skip
        log = open(log_path, "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
        log.close()
        if _wait_ready(proc, port, token, startup_timeout):
            break
        proc.kill()
        proc.wait()
        proc = None
    if proc is None:
        log_tail = log_path.read_text(errors="replace")[-3000:]
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabError(f"JupyterLab did not start; its log ends with:\n{log_tail}")
    server = LabServer(port=port, token=token, root_dir=root, log_path=log_path, proc=proc, app=app)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen, port: int, token: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2):
                return True
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    return False


@contextmanager
def chromium_browser():
    """Headless Debian Chromium driven by playwright (playwright cannot download its own here)."""
    from playwright.sync_api import sync_playwright

    reason = chromium_missing_reason()
    if reason:
        raise LabError(reason)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
