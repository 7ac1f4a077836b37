"""llm.huge_pages: the environment it re-executes with, when it does, and a real re-exec."""

import os
import subprocess
import sys

import pytest

from llm import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("before,after", [
    (None, "glibc.malloc.hugetlb=1"),
    ("", "glibc.malloc.hugetlb=1"),
    ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
    ("glibc.malloc.hugetlb=0", None),  # the user's opt-out wins
    ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", None),  # already re-executed
])
def test_environment_appends_the_tunable_once(before, after):
    environ = {"PATH": "/bin"} if before is None else {"PATH": "/bin", "GLIBC_TUNABLES": before}
    env = huge_pages.environment_with_huge_pages(environ)
    if after is None:
        assert env is None
    else:
        assert env == {"PATH": "/bin", "GLIBC_TUNABLES": after}


def test_reexec_runs_the_same_command(monkeypatch):
    calls = []
    monkeypatch.setattr(huge_pages, "huge_pages_available", lambda: True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "llm", "--workdir", "w"])
    huge_pages.reexec_with_huge_pages(execve=lambda *args: calls.append(args))
    (path, argv, env), = calls
    assert path == sys.executable and argv == [sys.executable, "-m", "llm", "--workdir", "w"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    huge_pages.reexec_with_huge_pages(execve=lambda *args: calls.append(args))
    assert len(calls) == 1


def test_reexec_is_skipped_where_huge_pages_do_not_apply(monkeypatch, tmp_path):
    never = tmp_path / "enabled"
    never.write_text("always madvise [never]\n")
    assert not huge_pages.huge_pages_available(str(never))
    monkeypatch.setattr(huge_pages, "huge_pages_available", lambda: False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    huge_pages.reexec_with_huge_pages(execve=lambda *args: pytest.fail("re-executed"))


def test_a_real_process_reexecutes_once():
    code = ("import os; from llm.huge_pages import reexec_with_huge_pages; "
            "print('start', flush=True); reexec_with_huge_pages(); "
            "print(os.environ.get('GLIBC_TUNABLES'))")
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    if huge_pages.huge_pages_available():
        assert out == ["start", "start", "glibc.malloc.hugetlb=1"]
    else:
        assert out == ["start", "None"]
