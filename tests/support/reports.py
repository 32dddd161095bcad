"""Reports the lab tests print at the end of the session (the agent vs scenario table...).

Kept in a plain module, not a conftest: the hooks that print them (tests/conftest.py) also
run in pytest-xdist's controller, which collects nothing and so never loads tests/lab/.
"""

from __future__ import annotations

REPORTS: list[str] = []
