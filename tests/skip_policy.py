"""pytest plugin that tests/run.sh and tests/deploy/check.sh load (`-p skip_policy`): a skipped test fails the run
unless ALLOWED_SKIPS names it, and every allowed skip is printed with why it is fine. A skip hides a test that did
not run — a missing package, a missing client — so CI must not stay green on one by accident."""

from __future__ import annotations

import re

import pytest

# regex searched in "NODEID: REASON" -> why that skip is acceptable (printed on every run that skips it)
ALLOWED_SKIPS: dict[str, str] = {}

_skipped: list[tuple[str, str]] = []


def _record(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):  # an xfail is an expected failure, not a skip
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    _skipped.append((report.nodeid, reason))


def pytest_runtest_logreport(report) -> None:
    _record(report)


def pytest_collectreport(report) -> None:
    _record(report)


def _why_allowed(nodeid: str, reason: str) -> str | None:
    line = f"{nodeid}: {reason}"
    return next((why for pattern, why in ALLOWED_SKIPS.items() if re.search(pattern, line)), None)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    if exitstatus == 0 and any(_why_allowed(n, r) is None for n, r in _skipped):
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:
    if not _skipped:
        return
    tr = terminalreporter
    tr.section("skip policy (tests/skip_policy.py)")
    for nodeid, reason in _skipped:
        why = _why_allowed(nodeid, reason)
        if why is None:
            tr.write_line(f"UNEXPECTED SKIP (fails the run): {nodeid}: {reason}", red=True)
        else:
            tr.write_line(f"allowed skip: {nodeid}: {reason} -- {why}")
