"""The check that no secret reaches a log: every log file of a test session is searched for the passwords, tokens
and secrets the session used, and MetaHub's own logs for anything shaped like a JWT or a signed URL.

Used at the end of the e2e and Lambda sessions (their conftest's `pytest_sessionfinish`): a leak fails the run.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

# A JWT (header.payload.), whatever its claims; and the signature parameters of presigned URLs.
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
SIGNED_URL = re.compile(rb"X-Amz-Signature|X-Amz-Credential|[?&]Signature=|[?&]sig=", re.IGNORECASE)

# Tokens issued during the session (conftest's get_token adds them).
ISSUED_TOKENS: set[str] = set()


def leaks(log_dir: Path, secrets: list[str], logins: dict[str, str] | None = None, own_prefix: str = "metahub") -> list[str]:
    """Every `file: what` found: a secret anywhere under `log_dir`, and in MetaHub's own logs (files whose name
    starts with `own_prefix`) a JWT, a presigned-URL signature or `login:password` in Basic form."""
    needles = {s.encode(): f"secret {s[:4]}…" for s in secrets if s}
    for login, password in (logins or {}).items():
        basic = base64.b64encode(f"{login}:{password}".encode())
        needles[basic] = f"Basic credentials of {login}"
    found = []
    for path in sorted(log_dir.rglob("*.log")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        found += [f"{path.name}: {what}" for needle, what in needles.items() if needle in data]
        if path.name.startswith(own_prefix):
            found += [f"{path.name}: a JWT ({m.group()[:12]!r}…)" for m in JWT.finditer(data)][:1]
            found += [f"{path.name}: a presigned URL signature" for _ in SIGNED_URL.finditer(data)][:1]
    return found


def report(session, found: list[str]) -> None:
    """Fails the session naming each leak."""
    if not found:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["SECRETS IN LOGS:"] + [f"  {f}" for f in found]
    if reporter:
        for line in lines:
            reporter.write_line(line, red=True)
    else:
        print("\n".join(lines))
    session.exitstatus = 1
