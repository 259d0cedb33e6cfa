"""The core library never imports GUI stacks (napari, Qt, magicgui, vispy)."""

from __future__ import annotations

import subprocess
import sys

GUI_PREFIXES = ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "magicgui", "vispy")


def test_import_bmbx_plan_pulls_in_no_gui() -> None:
    code = (
        "import sys, bmbx_plan, bmbx_plan.io\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_PREFIXES!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
