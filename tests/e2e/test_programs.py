"""Every program a test starts comes from tests/install.sh (issue 31: a test started `htpasswd`, which a fresh
machine lacked). tests/programs.py enforces it at run time; these tests check the enforcement itself and scan the
harness for programs named in the source, so that a new one fails here even before a test starts it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import programs

TESTS = Path(__file__).resolve().parents[1]
STARTS = re.compile(r'(?:run|Popen|check_output|check_call|spawn|start\w*)\(\s*\[\s*"([A-Za-z][\w.+-]*)"')
WHICH = re.compile(r'which\(\s*"([A-Za-z][\w.+-]*)"\s*\)')


def named_in_source() -> dict[str, str]:
    """program -> the first test file that starts it by a literal name"""
    found: dict[str, str] = {}
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text(errors="replace")
        for name in STARTS.findall(text) + WHICH.findall(text):
            found.setdefault(name, str(path.relative_to(TESTS)))
    return found


def test_every_program_the_harness_names_is_declared_in_install_sh():
    undeclared = {name: where for name, where in named_in_source().items() if name not in programs.DECLARED}
    assert not undeclared, f"add a cmd: probe for each to tests/install.sh's test group: {undeclared}"


def test_the_scan_sees_the_programs_it_must():
    # htpasswd is the program that broke the fresh machine; the scan must keep seeing it
    assert {"htpasswd", "skopeo", "ctr", "node"} <= set(named_in_source())


def test_install_sh_declares_what_the_harness_starts_by_variable():
    for name in ("skopeo", "podman", "ctr", "containerd", "dockerd", "docker-registry", "moto_server", "chromium",
                 "chromedriver", "htpasswd"):
        assert name in programs.DECLARED, name


def test_the_run_time_check_is_installed_and_refuses_an_undeclared_program():
    assert subprocess.Popen.__init__ is programs._checked_init
    assert programs.undeclared("true") == "true"  # coreutils: on this machine, but install.sh does not declare it
    assert programs.undeclared("/usr/bin/true") == "true"
    assert programs.undeclared("skopeo") is None
    assert programs.undeclared(sys.executable) is None
    assert programs.undeclared(str(programs.ROOT / "target" / "debug" / "metahub")) is None


def test_declared_programs_reads_each_group(tmp_path):
    sh = tmp_path / "install.sh"
    sh.write_text("x\nPACKAGES='\ntest apt foo cmd:foo cmd:foo-ctl py:foo\nbench apt bar cmd:bar\n'\n")
    assert programs.declared_programs("test", sh) == {"foo": "apt foo", "foo-ctl": "apt foo"}
    assert programs.declared_programs("bench", sh) == {"bar": "apt bar"}
