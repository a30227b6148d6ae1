"""docs/parameters.md is generated from the parameter tables: keep the committed page in sync.

Pure: imports the tables, creates no node.
"""

import os

from video_bridge.ros import camera_node, lineup, parameter_docs, parameters

REPO = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..'))
PAGE = os.path.join(REPO, 'docs', 'parameters.md')


def test_parameters_page_matches_the_tables():
    with open(PAGE, encoding='utf-8') as page:
        committed = page.read()
    assert committed == parameter_docs.render(), (
        'docs/parameters.md is out of date with the parameter tables: run '
        'scripts/gen-parameter-docs and commit the page')


def test_every_parameter_and_launch_argument_has_a_row():
    text = parameter_docs.render()
    names = (list(parameters.BRIDGE_PARAMETERS) + list(parameters.STREAM_PARAMETERS)
             + list(camera_node.PARAMETERS) + list(lineup.LAUNCH_ARGUMENTS))
    missing = [name for name in names if f'| `{name}` |' not in text]
    assert missing == []


def test_a_changed_table_changes_the_page(monkeypatch):
    """The sync check would catch a parameter added or reworded without regenerating."""
    before = parameter_docs.render()
    table = dict(parameters.BRIDGE_PARAMETERS)
    table['max_widgets'] = (7, 'Widgets at once; | and <b> stay text.', (1, 9))
    monkeypatch.setattr(parameters, 'BRIDGE_PARAMETERS', table)
    after = parameter_docs.render()
    assert after != before
    assert ('| `max_widgets` | `7` | 1 .. 9 | Widgets at once; \\| and &lt;b&gt; stay text. |'
            in after)


def test_check_mode_names_the_command(tmp_path, capsys):
    stale = tmp_path / 'parameters.md'
    stale.write_text('# Parameters\n', encoding='utf-8')
    assert parameter_docs.main(['--check', str(stale)]) == 1
    assert 'scripts/gen-parameter-docs' in capsys.readouterr().err
    assert parameter_docs.main([str(stale)]) == 0
    assert parameter_docs.main(['--check', str(stale)]) == 0


def test_sections_come_from_the_table_comments():
    titles = parameter_docs.section_titles(parameters, 'BRIDGE_PARAMETERS')
    assert set(titles) == set(parameters.BRIDGE_PARAMETERS)
    assert all(titles.values()), 'every bridge parameter sits under a # section comment'


def test_defaults_are_written_as_in_yaml():
    assert parameter_docs.format_default(True) == '`true`'
    assert parameter_docs.format_default(['']) == '`[""]`'
    assert parameter_docs.format_default(['h264', 'vp8']) == '`["h264", "vp8"]`'
    assert parameter_docs.format_default('') == '`""`'
    assert parameter_docs.format_default(0.5) == '`0.5`'
    assert parameter_docs.format_limits((0, 65535)) == '0 .. 65535'
    assert parameter_docs.format_limits(('', 'MJPG')) == 'one of `""`, `MJPG`'
