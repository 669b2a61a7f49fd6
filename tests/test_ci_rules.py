"""The suite's own rules (tests/conftest.py): a test reading a missing `../shared` path skips in a developer's
loop and fails under CI=true, so a CI without the official fixtures can never pass."""
from conftest import ROOT

pytest_plugins = ["pytester"]

READS_SHARED = """
from pathlib import Path
from conftest import needs_shared


@needs_shared(Path("/nonexistent"))
def test_reads_shared():
    pass
"""


def test_a_missing_shared_path_fails_under_ci_and_skips_without(pytester, monkeypatch):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())  # the real rule, in a throw-away suite
    pytester.makepyfile(test_reads=READS_SHARED)
    monkeypatch.setenv("CI", "true")
    ci = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    ci.assert_outcomes(errors=1)  # pytest.fail in setup: an error, and the run fails
    assert ci.ret != 0
    ci.stdout.fnmatch_lines(["*/nonexistent is absent: CI (CI=true) must run with ../shared*"])
    monkeypatch.delenv("CI")
    local = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    local.assert_outcomes(skipped=1)
    assert local.ret == 0
