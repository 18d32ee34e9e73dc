"""The CI guard: a skip under CI=true fails the run; elsewhere it stays a skip with its reason."""
import pytest

INNER = """
import pytest

def test_needs_something():
    pytest.skip("the loopback phone cannot start here")

@pytest.mark.skipif(True, reason="qemu-x86_64 not installed")
def test_marked():
    pass
"""


@pytest.mark.parametrize("ci,expected", [("true", {"failed": 1, "errors": 1}), ("", {"skipped": 2})])
def test_skips_fail_only_under_ci(pytester, monkeypatch, ci, expected):
    monkeypatch.setenv("CI", ci)
    pytester.makeconftest("pytest_plugins = ['no_hidden_skips']")
    pytester.makepyfile(INNER)
    result = pytester.runpytest_inprocess("-rs")
    result.assert_outcomes(**expected)
    if ci:
        result.stdout.fnmatch_lines(["*skipped under CI=true*the loopback phone cannot start here*"])
