"""Lint what the package's own linters (src/video_bridge/test) do not see.

- test/ and bench/ with flake8 in ament's configuration, minus the docstring-layout rules
  (test/flake8.ini says why): unused imports, shadowed fixtures, import order and line length
  matter in tests as much as in the package.
- Every shell script of the repository (found by its shebang, so a new one is checked without
  being listed here) with ShellCheck, following sourced files (-x).

The package itself is linted by src/video_bridge/test/test_flake8.py and test_pep257.py.
"""

import os
import shutil
import subprocess

from conftest import REPO
import pytest

SHELL_SHEBANGS = (b'#!/bin/sh', b'#!/bin/bash', b'#!/usr/bin/env bash', b'#!/usr/bin/env sh')
# Generated or installed trees (scripts/bootstrap, colcon, the test runs), not our sources.
SKIPPED_DIRS = {'build', 'build-lowest', 'install', 'install-lowest', 'log', 'node_modules',
                'test-output', '__pycache__'}


def shell_scripts() -> list:
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS
                         and (d == '.ci' or not d.startswith('.')))
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.endswith('.sh') or os.access(path, os.X_OK):
                with open(path, 'rb') as handle:
                    first = handle.readline().strip()
                if name.endswith('.sh') or first.startswith(SHELL_SHEBANGS):
                    found.append(os.path.relpath(path, REPO))
    return found


def test_tests_and_benchmarks_pass_flake8(monkeypatch):
    from ament_flake8.main import main_with_errors
    monkeypatch.chdir(REPO)
    rc, errors = main_with_errors(argv=['--config', os.path.join('test', 'flake8.ini'),
                                        'test', 'bench'])
    assert rc == 0, f'{len(errors)} flake8 findings:\n' + '\n'.join(errors)


def test_shell_scripts_pass_shellcheck():
    if shutil.which('shellcheck') is None:
        pytest.skip('shellcheck is not installed (scripts/bootstrap installs it)')
    scripts = shell_scripts()
    assert {'scripts/test', 'scripts/bootstrap', '.ci/run'} <= set(scripts), scripts
    result = subprocess.run(['shellcheck', '-x', *scripts], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_page_scripts_parse():
    """Every page module and its Node test parses (node --check); no lint tool is installed
    from a registry for the page, which has no build step: the Node tests cover behaviour."""
    node = shutil.which('node')
    if node is None:
        pytest.skip('node is not installed (scripts/bootstrap installs it)')
    folders = [os.path.join(REPO, 'web', 'js'), os.path.join(REPO, 'web', 'test')]
    scripts = sorted(os.path.join(folder, name) for folder in folders
                     for name in os.listdir(folder) if name.endswith('.js'))
    assert len(scripts) > 10, scripts
    failed = {}
    for script in scripts:
        result = subprocess.run([node, '--check', script], capture_output=True, text=True,
                                timeout=30)
        if result.returncode != 0:
            failed[os.path.relpath(script, REPO)] = result.stderr.strip()
    assert not failed, failed
