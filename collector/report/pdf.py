"""The report as PDF, printed by a headless Chromium (Debian's ``chromium`` package), when one
is installed: no PDF library to maintain, and the PDF looks like the HTML it is made from."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from agent.errors import UsageError, VigilError

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-pdf-header-footer")
TIMEOUT_S = 120


def chromium() -> str | None:
    """The browser to print with: $VIGIL_CHROMIUM, else chromium on the PATH."""
    named = os.environ.get("VIGIL_CHROMIUM")
    if named:
        return named if Path(named).exists() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def print_pdf(html: Path, pdf: Path) -> None:
    browser = chromium()
    if browser is None:
        raise UsageError("--pdf needs Chromium (apt-get install chromium, or set VIGIL_CHROMIUM)")
    cmd = [browser, *FLAGS, f"--print-to-pdf={pdf}", html.resolve().as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VigilError(f"printing the report to PDF failed: {exc}") from None
    if proc.returncode != 0 or not pdf.exists() or pdf.read_bytes()[:5] != b"%PDF-":
        raise VigilError(f"printing the report to PDF failed: {proc.stderr.strip()[-300:]}")
