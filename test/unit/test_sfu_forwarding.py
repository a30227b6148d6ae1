"""core/sfu_forwarding.py: what the cloud's forwarder asks of Janus nodes, from what they say,
and the forwarder's config (sfu_forwarder.load_config) with its secrets in files."""

import os

import pytest
from video_bridge.core import sfu_forwarding as fw
from video_bridge.core.sfu_forwarding import Link, Probe, RemoveRemote, Stream, Unforward

ROOM = 4242
VP8 = (Stream('video', '0', 0, 'vp8'),)


def participants(*entries):
    return {'videoroom': 'participants', 'room': ROOM, 'participants': list(entries)}


def test_origin_feeds_are_the_publishing_local_participants():
    answer = participants(
        {'id': 11, 'publisher': True}, {'id': 12, 'publisher': False},
        {'id': 13, 'publisher': True, 'remote': True}, {'id': 14, 'publisher': True,
                                                        'dummy': True},
        {'id': 15, 'publisher': 'yes'}, {'id': True, 'publisher': True},
        {'id': '16', 'publisher': True}, {'id': -1, 'publisher': True},
        {'id': 0, 'publisher': True}, {'id': 2 ** 60, 'publisher': True},
        {'id': 1.5, 'publisher': True}, 'not a participant', None, [17])
    assert fw.origin_feeds(answer) == {11}


@pytest.mark.parametrize('answer', [None, [], 'participants', {}, {'participants': None},
                                    {'participants': {'id': 1}}, {'participants': 'x'}])
def test_odd_listparticipants_answers_name_no_feeds(answer):
    assert fw.origin_feeds(answer) == frozenset()
    assert fw.edge_remotes(answer) == frozenset()


def test_a_room_is_read_only_up_to_a_bound():
    many = participants(*({'id': n, 'publisher': True, 'remote': True}
                          for n in range(1, 10_001)))
    assert len(fw.origin_feeds(dict(many, participants=[
        dict(p, remote=False) for p in many['participants']]))) == fw.MAX_PARTICIPANTS
    assert len(fw.edge_remotes(many)) == fw.MAX_PARTICIPANTS


def test_edge_remotes_are_only_the_remote_publishers():
    answer = participants({'id': 21, 'publisher': True, 'remote': True},
                          {'id': 22, 'publisher': True},            # someone local: not ours
                          {'id': 23, 'remote': 'true'}, {'id': 'x', 'remote': True})
    assert fw.edge_remotes(answer) == {21}


def test_remote_ids_of_a_listremotes_answer():
    answer = {'videoroom': 'success', 'list': [
        {'remote_id': 'vbf-node-b', 'host': '192.0.2.12', 'port': 10000},
        {'remote_id': 7}, {'host': 'x'}, 'vbf-x', {'remote_id': 'x' * 65},
        {'remote_id': 'someone-else'}]}
    assert fw.remote_ids(answer) == {'vbf-node-b', 'someone-else'}
    for odd in (None, {}, {'list': None}, {'list': 'vbf-node-b'}, []):
        assert fw.remote_ids(odd) == frozenset()


def test_feed_streams_from_a_subscription():
    streams = [{'type': 'video', 'mindex': 0, 'mid': '0', 'feed_id': 11, 'feed_mid': '0',
                'codec': 'vp8'},
               {'type': 'audio', 'mindex': 1, 'mid': '1', 'feed_mid': 'a1', 'codec': 'opus'}]
    assert fw.feed_streams(streams) == (Stream('video', '0', 0, 'vp8'),
                                        Stream('audio', 'a1', 1, 'opus'))
    assert fw.feed_streams(streams)[0].request() == {'type': 'video', 'mid': '0', 'mindex': 0,
                                                     'codec': 'vp8'}
    h264 = [dict(streams[0], codec='h264')]
    assert fw.feed_streams(h264) == (Stream('video', '0', 0, 'h264'),)   # forwarded as it is


@pytest.mark.parametrize('streams', [
    None, [], 'streams', {'type': 'video'}, [None], [{'type': 'data', 'feed_mid': '0'}],
    [{'type': 'video', 'feed_mid': '0'}],                          # no codec (inactive)
    [{'type': 'video', 'feed_mid': '0', 'codec': 'mystery'}],
    [{'type': 'video', 'feed_mid': 0, 'codec': 'vp8'}],
    [{'type': 'video', 'feed_mid': '0; rm -rf', 'codec': 'vp8'}],
    [{'type': 'video', 'feed_mid': 'x' * 17, 'codec': 'vp8'}],
    [{'type': 'video', 'feed_mid': '0', 'codec': 'vp8'}] * 2,       # the same mid twice
    [{'type': 'video', 'feed_mid': str(n), 'codec': 'vp8'} for n in range(9)],
])
def test_odd_streams_are_not_forwarded(streams):
    assert fw.feed_streams(streams) is None


def test_a_new_feed_is_probed_then_linked_to_every_edge():
    edges = {'node-b': frozenset(), 'node-c': frozenset()}
    assert fw.plan(ROOM, {11: frozenset()}, edges, {}) == [Probe(ROOM, 11)]
    assert fw.plan(ROOM, {11: frozenset()}, edges, {11: VP8}) == [
        Link(ROOM, 11, 'node-b', VP8), Link(ROOM, 11, 'node-c', VP8)]


def test_nothing_to_do_when_every_edge_has_every_feed():
    assert fw.plan(ROOM, {11: frozenset({'vbf-node-b'})}, {'node-b': frozenset({11})},
                   {11: VP8}) == []


def test_a_republished_feed_replaces_the_old_one_on_the_edges():
    """The robot published again: a new id on the origin, the old one lingers on the edge."""
    assert fw.plan(ROOM, {12: frozenset()}, {'node-b': frozenset({11})}, {12: VP8}) == [
        Link(ROOM, 12, 'node-b', VP8), RemoveRemote(ROOM, 11, 'node-b')]


def test_an_edge_that_restarted_is_linked_again():
    """The origin still forwards to the edge's old ports; the edge has no remote publisher."""
    assert fw.plan(ROOM, {11: frozenset({'vbf-node-b'})}, {'node-b': frozenset()},
                   {11: VP8}) == [Unforward(ROOM, 11, 'node-b'), Link(ROOM, 11, 'node-b', VP8)]


def test_a_half_made_link_is_made_again():
    """add_remote_publisher went through, publish_remotely did not (or the origin restarted)."""
    assert fw.plan(ROOM, {11: frozenset()}, {'node-b': frozenset({11})}, {11: VP8}) == [
        RemoveRemote(ROOM, 11, 'node-b'), Link(ROOM, 11, 'node-b', VP8)]


def test_a_robot_that_stopped_leaves_nothing_on_the_edges():
    assert fw.plan(ROOM, {}, {'node-b': frozenset({11, 12})}, {}) == [
        RemoveRemote(ROOM, 11, 'node-b'), RemoveRemote(ROOM, 12, 'node-b')]


def test_an_unreadable_node_gets_no_action_that_depends_on_it():
    # the origin unreadable: not the same as an empty room (that would remove every feed)
    assert fw.plan(ROOM, None, {'node-b': frozenset({11})}, {11: VP8}) == []
    # an edge unreadable: the other edge is served, that one left alone
    assert fw.plan(ROOM, {11: frozenset()}, {'node-b': None, 'node-c': frozenset()},
                   {11: VP8}) == [Link(ROOM, 11, 'node-c', VP8)]
    # a feed's remotizations unreadable: no link for it, and it is not removed anywhere
    assert fw.plan(ROOM, {11: None}, {'node-b': frozenset({11})}, {11: VP8}) == []


def test_only_this_forwarders_remotizations_are_stopped():
    remotes = frozenset({'vbf-node-b', 'vbf-node-gone', 'someone-else'})
    assert fw.plan(ROOM, {11: remotes}, {'node-b': frozenset({11})}, {11: VP8}) == [
        Unforward(ROOM, 11, 'node-gone')]


def test_probes_are_forgotten_with_their_feeds():
    streams = {11: VP8, 12: VP8}
    fw.forget(streams, [12, 13])
    assert streams == {12: VP8}


def test_edge_names_fit_a_remote_id():
    assert fw.valid_name('node-b') and fw.valid_name('b2')
    for name in ('', 'Node', '-b', 'b' * 33, 'b c', 'b/c', None, 7):
        assert not fw.valid_name(name)
    assert fw.remote_id('node-b') == 'vbf-node-b'


# --- the forwarder's config ---------------------------------------------------------------


def secret_files(tmp_path):
    files = {}
    for name, value in (('admin', 'the-admin-key'), ('token', 'the-token-secret'),
                        ('room', 'the-room-secret'), ('pin', 'the-pin')):
        path = tmp_path / name
        path.write_text(value + '\n')
        os.chmod(path, 0o600)
        files[name] = str(path)
    return files


def config(files, **changes):
    raw = {'origin': {'url': 'ws://127.0.0.1:8188'},
           'edges': [{'name': 'node-b', 'url': 'ws://192.0.2.12:8188',
                      'address': '192.0.2.12'}],
           'rooms': [{'room': ROOM, 'secret_file': files['room'], 'pin_file': files['pin']}],
           'admin_key_file': files['admin'], 'token_secret_file': files['token']}
    raw.update(changes)
    return raw


def test_config_reads_its_secrets_from_files(tmp_path):
    from video_bridge.sfu_forwarder import load_config
    loaded = load_config(config(secret_files(tmp_path)))
    assert loaded.admin_key == 'the-admin-key' and loaded.token_secret == 'the-token-secret'
    assert loaded.rooms[0].secret == 'the-room-secret' and loaded.rooms[0].pin == 'the-pin'
    assert loaded.edges[0].name == 'node-b' and loaded.poll_interval == 1.0


def test_the_example_config_is_valid(tmp_path):
    """deploy/cloud/sfu-forwarder.yaml, its secret files pointed at test files."""
    import yaml
    from conftest import REPO
    from video_bridge.sfu_forwarder import load_config
    files = secret_files(tmp_path)
    with open(os.path.join(REPO, 'deploy', 'cloud', 'sfu-forwarder.yaml')) as handle:
        raw = yaml.safe_load(handle)
    raw['admin_key_file'], raw['token_secret_file'] = files['admin'], files['token']
    for room in raw['rooms']:
        room['secret_file'], room['pin_file'] = files['room'], files['pin']
    loaded = load_config(raw)
    assert len(loaded.rooms) == 2 and len(loaded.edges) >= 1


@pytest.mark.parametrize('change', [
    {'origin': None}, {'origin': {'url': 'http://x'}}, {'edges': []},
    {'edges': [{'name': 'B', 'url': 'ws://x', 'address': 'x'}]},
    {'edges': [{'name': 'b', 'url': 'ws://x'}]},
    {'edges': [{'name': 'b', 'url': 'ws://x', 'address': 'x'}] * 2},
    {'edges': [{'name': f'n{i}', 'url': 'ws://x', 'address': 'x'} for i in range(17)]},
    {'rooms': []}, {'rooms': [{'room': 0, 'secret_file': 'x'}]},
    {'rooms': [{'room': True, 'secret_file': 'x'}]}, {'rooms': [{'room': 1}]},
    {'rooms': ['x']}, {'admin_key_file': None}, {'admin_key_file': '/nonexistent/key'},
    {'poll_interval': 0}, {'poll_interval': 'fast'}, {'request_timeout': 1000},
])
def test_config_refuses_what_could_never_work(tmp_path, change):
    from video_bridge.sfu_forwarder import load_config
    with pytest.raises(ValueError):
        load_config(config(secret_files(tmp_path), **change))


def test_the_forwarder_needs_no_ros_and_no_media_stack():
    """It runs on a cloud host with aiohttp and PyYAML: importing it pulls in nothing else."""
    import subprocess
    import sys
    code = ('import sys, video_bridge.sfu_forwarder; '
            "print([m for m in ('rclpy', 'cv2', 'aiortc', 'av', 'numpy') if m in sys.modules])")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == '[]', result
