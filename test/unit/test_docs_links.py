"""The docs stay honest where that is cheap to check: links resolve, no stray commit hashes.

Pure: reads markdown files, runs nothing.
"""

import glob
import os
import re

import pytest

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
PAGES = sorted(
    [os.path.join(REPO, 'README.md'), os.path.join(REPO, 'bench', 'README.md'),
     os.path.join(REPO, 'web', 'README.md')]
    + glob.glob(os.path.join(REPO, 'docs', '*.md'))
    + glob.glob(os.path.join(REPO, 'bench', 'reports', '*.md')))
# Pages for users of the package: what the code does now, so no history and no commit hashes
# except on a figure's "measured at" line. bench/reports/ is history by design.
USER_PAGES = [page for page in PAGES if os.sep + 'reports' + os.sep not in page]

LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)
CODE_SPAN = re.compile(r'`[^`\n]*`')
# 7-40 hex digits with at least one letter and one digit: a commit, not a number or a word.
COMMIT = re.compile(r'\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b')
NOT_COMMITS = {'ed25519'}  # hex-looking words of the trade


def _read(path):
    with open(path, encoding='utf-8') as page:
        return page.read()


def _prose(text):
    """Text without fenced blocks and code spans, where a [x](y) is no link."""
    return CODE_SPAN.sub('', FENCE.sub('', text))


def slug(heading):
    """Anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path):
    return {slug(line.lstrip('#')) for line in FENCE.sub('', _read(path)).splitlines()
            if re.match(r'#{1,6} ', line)}


def _name(path):
    return os.path.relpath(path, REPO)


@pytest.mark.parametrize('page', PAGES, ids=_name)
def test_every_relative_link_points_at_a_file_that_exists(page):
    broken = []
    for target in LINK.findall(_prose(_read(page))):
        if re.match(r'[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not resolved.startswith(REPO) or not os.path.exists(resolved):
            broken.append(f'{target}: no such file')
        elif anchor and resolved.endswith('.md') and anchor not in anchors(resolved):
            broken.append(f'{target}: no heading #{anchor} in {_name(resolved)}')
    assert broken == [], f'{_name(page)} has broken links'


@pytest.mark.parametrize('page', USER_PAGES, ids=_name)
def test_commit_hashes_appear_only_where_a_figure_says_measured_at(page):
    """History goes to CHANGELOG.rst and bench/reports/; a figure names the commit it measured."""
    stray = []
    for block in re.split(r'\n\s*\n', _read(page)):
        if 'measured at' not in block.lower():
            stray += [word for word in COMMIT.findall(block) if word not in NOT_COMMITS]
    assert stray == [], f'{_name(page)} names commits outside a "measured at" paragraph'


def test_the_readme_quick_start_stays_two_commands():
    """A fresh machine needs exactly these two: the car demo and the whole suite, as CI runs it."""
    readme = _read(os.path.join(REPO, 'README.md'))
    blocks = re.findall(r'^```bash\n(.*?)^```', readme, re.M | re.S)
    commands = [[line.split('#')[0].strip() for line in block.splitlines()] for block in blocks]
    assert ['scripts/demo', 'scripts/test'] in commands
    assert 'exec scripts/test' in _read(os.path.join(REPO, '.ci', 'run'))


def test_the_link_checker_finds_a_broken_link(tmp_path):
    """The checks above would catch what they look for."""
    (tmp_path / 'a.md').write_text('# Top\n\nSee [b](b.md), [top](#top) and `[c](c.md)`.\n')
    text = _prose(_read(str(tmp_path / 'a.md')))
    assert LINK.findall(text) == ['b.md', '#top']
    assert anchors(str(tmp_path / 'a.md')) == {'top'}
    assert slug('WebRTC beside websocket `JPEG`') == 'webrtc-beside-websocket-jpeg'
    assert slug("coturn's denied peers") == 'coturns-denied-peers'
    assert COMMIT.findall('at 238b538, not 1712345678 or deadbeef') == ['238b538']
