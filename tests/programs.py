"""pytest plugin that tests/run.sh loads in every suite (`-p programs`): the programs a test may start are the ones
tests/install.sh declares (its `cmd:` probes), and nothing else.

- At start-up, every program the `test` group declares must be on PATH. A missing one ends the run at once with its
  name and the package that provides it, instead of a FileNotFoundError forty minutes in.
- During the run, every process a test starts (subprocess.Popen, which subprocess.run and selenium use too) is
  checked against that list. A program that install.sh does not declare fails the run at the call that started
  it, on this machine too, where it may happen to be installed by hand.

The project's own binaries (under the repository or the cargo target directory) and this Python interpreter are
always allowed: the build makes them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL_SH = ROOT / "tests" / "install.sh"


def declared_programs(group: str = "test", install_sh: Path = INSTALL_SH) -> dict[str, str]:
    """program -> the package that provides it, from the `cmd:` probes of GROUP's rows in install.sh."""
    text = install_sh.read_text()
    block = re.search(r"^PACKAGES='\n(.*?)^'", text, re.S | re.M)
    if block is None:
        raise RuntimeError(f"{install_sh}: no PACKAGES='...' block")
    programs: dict[str, str] = {}
    for line in block.group(1).splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] != group:
            continue
        kind, package = fields[1], fields[2]
        for probe in fields[3:]:
            if probe.startswith("cmd:"):
                programs[probe[4:]] = f"{kind} {package}"
    return programs


DECLARED = declared_programs()


def _own_roots() -> list[Path]:
    """Where the build puts the project's binaries: the repository, CARGO_TARGET_DIR, METAHUB_BIN's folder."""
    roots = [ROOT]
    for built in (os.environ.get("CARGO_TARGET_DIR"), os.path.dirname(os.environ.get("METAHUB_BIN", ""))):
        if built:
            roots.append(Path(built).resolve())
    return roots


def undeclared(argv0: str) -> str | None:
    """The program name when ARGV0 is neither declared, nor one of the project's own binaries, nor this Python."""
    name = os.path.basename(argv0)
    if name in DECLARED:
        return None
    path = shutil.which(argv0) or argv0
    resolved = Path(path).resolve() if os.path.isabs(path) or os.sep in path else None
    if resolved is not None:
        if resolved == Path(sys.executable).resolve():
            return None
        if any(resolved.is_relative_to(r) for r in _own_roots()):
            return None
    return name


_started: set[str] = set()
_violations: list[str] = []
_original_init = subprocess.Popen.__init__


def _checked_init(self, args, *rest, **kwargs):
    argv0 = kwargs.get("executable") or (args if isinstance(args, (str, bytes, os.PathLike)) else args[0])
    argv0 = os.fsdecode(argv0)
    if kwargs.get("shell"):
        argv0 = "sh"
    name = undeclared(argv0)
    _started.add(os.path.basename(argv0))
    if name is not None:
        message = (f"a test started '{name}', which tests/install.sh does not declare: add a row with cmd:{name} "
                   f"to its test group, so that a fresh machine installs it")
        _violations.append(message)
        raise FileNotFoundError(message)
    _original_init(self, args, *rest, **kwargs)


def pytest_configure(config) -> None:
    missing = [f"{program} (install.sh row: {package})" for program, package in sorted(DECLARED.items())
               if shutil.which(program) is None]
    if missing:
        pytest.exit("missing programs the tests start: " + ", ".join(missing)
                    + " -- run `bash tests/install.sh test` as root", returncode=3)
    subprocess.Popen.__init__ = _checked_init


def pytest_unconfigure(config) -> None:
    subprocess.Popen.__init__ = _original_init


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus) -> None:
    if _violations and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter) -> None:
    if _violations:
        terminalreporter.section("undeclared programs (tests/programs.py)")
        for line in sorted(set(_violations)):
            terminalreporter.write_line(line, red=True)
