"""core/sfu.py: Janus signed tokens (the format Janus's auth.c verifies) and SFU watchers."""

import base64
import hashlib
import hmac

import pytest
from video_bridge.core import sfu


def test_token_is_what_janus_verifies():
    """EXPIRY,REALM,descriptors:base64(HMAC-SHA1(secret, that)), as Janus's auth.c checks."""
    token = sfu.mint_token('s3cret', 1_900_000_000.7, ('janus.plugin.videoroom',))
    data, signature = token.split(':')
    assert data == '1900000000,janus,janus.plugin.videoroom'
    expected = base64.b64encode(hmac.new(b's3cret', data.encode(), hashlib.sha1).digest())
    assert signature == expected.decode()


def test_room_grant_names_only_the_plugin_and_the_room():
    grant = sfu.room_grant('s3cret', 4242, now=1000.0, ttl=60)
    assert grant.expires_at == 1060 and grant.room == 4242
    assert sfu.read_token(grant.token, 's3cret', 1000.0) == (1060, (sfu.VIDEOROOM,))
    assert sfu.read_token(grant.room_token, 's3cret', 1000.0, sfu.VIDEOROOM) == \
        (1060, ('room=4242',))
    # the session token is no room token and the other way round (Janus checks the realm)
    assert sfu.read_token(grant.token, 's3cret', 1000.0, sfu.VIDEOROOM) is None
    assert sfu.read_token(grant.room_token, 's3cret', 1000.0) is None


def test_tokens_expire_and_need_the_secret():
    grant = sfu.room_grant('s3cret', 1, now=1000.0, ttl=60)
    assert sfu.read_token(grant.token, 's3cret', 1060.0) is not None
    assert sfu.read_token(grant.token, 's3cret', 1061.0) is None       # expired
    assert sfu.read_token(grant.token, 'other', 1000.0) is None        # forged
    edited = grant.token.replace('1060', '9999')
    assert sfu.read_token(edited, 's3cret', 1000.0) is None            # edited
    for junk in ('', 'a:b:c', 'x,janus:abc', None, 42):
        assert sfu.read_token(junk, 's3cret', 1000.0) is None


def test_ttl_is_bounded():
    assert sfu.room_grant('s', 1, now=0.0, ttl=10 ** 9).expires_at == sfu.MAX_TOKEN_TTL
    assert sfu.room_grant('s', 1, now=0.0, ttl=-5).expires_at == 1


def test_publisher_room_token_differs_from_a_viewers_minted_the_same_second():
    """Only the robot's room token goes on the room's allowed list: a viewer's must differ."""
    viewer = sfu.room_grant('s', 7, now=1000.0)
    robot = sfu.room_grant('s', 7, now=1000.0, publisher_nonce='abc123')
    assert robot.room_token != viewer.room_token
    assert sfu.read_token(robot.room_token, 's', 1000.0, sfu.VIDEOROOM)[1] == \
        ('room=7', 'publisher=abc123')


@pytest.mark.parametrize('descriptor', ['a,b', 'a:b', '', 'tab\there'])
def test_descriptors_cannot_forge_separators(descriptor):
    with pytest.raises(sfu.TokenError):
        sfu.mint_token('s', 1, (descriptor,))


def test_no_secret_no_token():
    with pytest.raises(sfu.TokenError):
        sfu.mint_token('', 1, ('x',))
    with pytest.raises(sfu.TokenError):
        sfu.mint_token('s', 1, ())


def test_watchers_heartbeat_and_linger():
    watchers = sfu.SfuWatchers(ttl=30.0, linger=10.0)
    assert watchers.wanted(0.0) == set()
    assert watchers.watch('a', 'cam', 0.0)
    assert watchers.watch('b', 'cam', 5.0)
    assert watchers.wanted(6.0) == {'cam'} and watchers.watchers('cam') == 2
    watchers.leave('a', 7.0)
    assert watchers.watchers('cam') == 1
    assert watchers.next_change(7.0) == 35.0         # b's heartbeat is due
    assert watchers.wanted(34.0) == {'cam'}
    assert watchers.wanted(35.5) == {'cam'}          # b expired at 35: lingering
    assert watchers.watchers('cam') == 0
    assert watchers.next_change(35.5) == 45.0
    assert watchers.wanted(45.1) == set()
    assert watchers.next_change(45.1) is None


def test_a_heartbeat_renews_and_a_new_stream_replaces():
    watchers = sfu.SfuWatchers(ttl=30.0, linger=10.0)
    watchers.watch('a', 'cam', 0.0)
    watchers.watch('a', 'cam', 25.0)                 # heartbeat
    assert watchers.wanted(50.0) == {'cam'}
    watchers.watch('a', 'rear', 51.0)                # one stream per session
    assert watchers.wanted(52.0) == {'cam', 'rear'}  # cam lingers
    assert watchers.wanted(61.5) == {'rear'}


def test_watchers_are_bounded():
    watchers = sfu.SfuWatchers(ttl=30.0, max_watchers=2)
    assert watchers.watch('a', 'cam', 0.0) and watchers.watch('b', 'cam', 0.0)
    assert not watchers.watch('c', 'cam', 1.0)
    assert watchers.watch('a', 'cam', 1.0)           # a renewal is not a newcomer
    assert watchers.watch('c', 'cam', 31.0)          # a and b expired: room again


def test_session_token_names_only_the_plugin():
    token = sfu.session_token('s3cret', now=1000.0, ttl=30)
    assert sfu.read_token(token, 's3cret', 1000.0) == (1030, (sfu.VIDEOROOM,))
    assert token == sfu.room_grant('s3cret', 5, now=1000.0, ttl=30).token


def test_janus_settings_refuse_what_never_publishes_and_name_what_is_open():
    from video_bridge.net.sfu_janus import JanusSettings
    with pytest.raises(ValueError, match='ws://'):
        JanusSettings(url='http://janus.example.org', room=1)
    with pytest.raises(ValueError, match='room'):
        JanusSettings(url='wss://janus.example.org/janus', room=0)
    with pytest.raises(ValueError, match='codec'):
        JanusSettings(url='wss://janus.example.org/janus', room=1, codec='av1')
    safe = JanusSettings(url='wss://janus.example.org/janus', room=1, token_secret='s',
                         room_secret='r')
    assert safe.weaknesses() == []
    assert 'anyone' in ' '.join(JanusSettings(url='wss://j/janus', room=1).weaknesses())
    assert 'allowed list' in ' '.join(
        JanusSettings(url='wss://j/janus', room=1, token_secret='s').weaknesses())
    assert 'not TLS' in ' '.join(JanusSettings(url='ws://203.0.113.5:8188', room=1,
                                               token_secret='s', room_secret='r').weaknesses())
