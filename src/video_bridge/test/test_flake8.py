"""
Check the package and the launch files with flake8 in ament's default configuration.

The tested paths are absolute, so the test runs from any working directory. The linter is
imported inside the test: without flake8 (and its plugins) installed only this test fails, not
the collection of every other test.
"""

import os

import pytest

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PACKAGE))
PATHS = [PACKAGE, os.path.join(REPO, 'launch')]


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8(monkeypatch):
    from ament_flake8.main import main_with_errors
    monkeypatch.chdir(PACKAGE)  # ament_flake8 walks the working directory for AMENT_IGNORE
    rc, errors = main_with_errors(argv=PATHS)
    assert rc == 0, \
        'Found %d code style errors / warnings:\n' % len(errors) + \
        '\n'.join(errors)
