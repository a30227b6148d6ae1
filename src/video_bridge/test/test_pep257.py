"""
Check the docstrings of the package and the launch files with ament_pep257.

The tested paths are absolute, so the test runs from any working directory. The linter is
imported inside the test: without pydocstyle installed only this test fails, not the collection
of every other test.
"""

import os

import pytest

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(PACKAGE))
PATHS = [PACKAGE, os.path.join(REPO, 'launch')]


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257():
    from ament_pep257.main import main
    rc = main(argv=PATHS)
    assert rc == 0, 'Found code style errors / warnings'
