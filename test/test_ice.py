"""Tests for video_bridge.core.ice: STUN/TURN settings and TURN REST API credentials."""

import base64
import hashlib
import hmac

import pytest
from video_bridge.core import ice


def test_rest_credential_is_coturns_use_auth_secret_format():
    username, credential = ice.rest_credential('s3cret', 'c7', now=1_000_000, ttl=600)
    assert username == '1000600:c7'
    expected = base64.b64encode(hmac.new(b's3cret', b'1000600:c7', hashlib.sha1).digest())
    assert credential == expected.decode()
    assert ice.rest_credential_valid('s3cret', username, credential, now=1_000_599)
    assert not ice.rest_credential_valid('s3cret', username, credential, now=1_000_601)
    assert not ice.rest_credential_valid('other', username, credential, now=1_000_000)
    assert not ice.rest_credential_valid('s3cret', '1000600:c8', credential, now=1_000_000)
    assert not ice.rest_credential_valid('s3cret', 'x:c7', credential, now=0)


@pytest.mark.parametrize('name', ['', 'a:b', 'x' * 65, 'spa ce', 'new\nline'])
def test_rest_credential_refuses_names_that_would_forge_the_username(name):
    with pytest.raises(ValueError):
        ice.rest_credential('s', name, 0, 60)


@pytest.mark.parametrize('ttl', [0, -1, ice.MAX_TTL + 1])
def test_rest_credential_refuses_unbounded_lifetimes(ttl):
    with pytest.raises(ValueError):
        ice.rest_credential('s', 'c1', 0, ttl)


def test_servers_mint_a_credential_per_client_and_never_show_the_secret():
    settings = ice.IceSettings(stun_urls=('stun:stun.example.org:3478',),
                               turn_urls=('turn:turn.example.org:3478?transport=udp',
                                          'turns:turn.example.org:443?transport=tcp'),
                               turn_secret='topsecret', turn_credential_ttl=60)
    first = [s.as_dict() for s in settings.servers('c1', now=100)]
    assert first[0] == {'urls': ['stun:stun.example.org:3478']}
    assert first[1]['urls'][1] == 'turns:turn.example.org:443?transport=tcp'
    assert first[1]['username'] == '160:c1'
    assert settings.servers('c2', now=100)[1].username == '160:c2'
    assert 'topsecret' not in repr(settings) and 'topsecret' not in str(first)


def test_static_credentials():
    settings = ice.IceSettings(turn_urls=('turn:192.0.2.1:3478',), turn_username='car',
                               turn_password='pw')
    (server,) = settings.servers('c1', 0)
    assert server.as_dict() == {'urls': ['turn:192.0.2.1:3478'], 'username': 'car',
                                'credential': 'pw'}
    assert ice.IceSettings().servers('c1', 0) == []


@pytest.mark.parametrize('bad', [
    dict(stun_urls=('http://example.org',)),
    dict(stun_urls=('stun:host:99999',)),
    dict(stun_urls=('stun:host?transport=udp',)),
    dict(stun_urls=('turn:host',)),                       # TURN in the STUN list
    dict(turn_urls=('stun:host',), turn_secret='s'),
    dict(turn_urls=('turns:host:443?transport=udp',), turn_secret='s'),
    dict(turn_urls=('turn:host',)),                       # no credentials at all
    dict(turn_urls=('turn:host',), turn_username='only-a-name'),
    dict(turn_urls=('turn:ho st',), turn_secret='s'),
    dict(host_addresses=('not-an-address',)),
    dict(turn_credential_ttl=0),
])
def test_bad_settings_fail_at_startup(bad):
    with pytest.raises(ValueError):
        ice.IceSettings(**bad)


def test_split_urls():
    assert ice.split_urls(['', 'stun:a', 'turn:b', ' turns:c:443 ']) == (
        ('stun:a',), ('turn:b', 'turns:c:443'))


def test_host_candidates_can_be_restricted():
    settings = ice.IceSettings(host_addresses=('192.0.2.10', '198.51.100.0/24'))
    assert settings.host_address_allowed('192.0.2.10')
    assert settings.host_address_allowed('198.51.100.77')
    assert not settings.host_address_allowed('203.0.113.5')
    assert not settings.host_address_allowed('garbage')
    sdp = '\r\n'.join([
        'v=0',
        'a=candidate:1 1 udp 2130706431 192.0.2.10 5000 typ host',
        'a=candidate:2 1 udp 2130706431 203.0.113.5 5001 typ host',
        'a=candidate:3 1 udp 1694498815 203.0.113.5 5002 typ srflx raddr 0.0.0.0 rport 0',
        ''])
    kept = ice.filter_candidates(sdp, settings)
    assert '192.0.2.10 5000' in kept and '203.0.113.5 5001' not in kept
    assert '203.0.113.5 5002 typ srflx' in kept   # only host candidates are restricted
    assert ice.filter_candidates(sdp, ice.IceSettings()) == sdp


def test_turn_without_credentials_names_the_file_parameters():
    with pytest.raises(ValueError, match='turn_secret_file, or turn_username and '
                                         'turn_password_file'):
        ice.IceSettings(turn_urls=('turn:192.0.2.1:3478',), turn_username='car')

BUNDLED_ANSWER = [
    'v=0', 'a=group:BUNDLE 0 1',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'a=mid:0',
    'a=candidate:1 1 udp 41885439 203.0.113.9 5000 typ relay raddr 0.0.0.0 rport 0',
    'a=end-of-candidates', 'a=sendonly',
    'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'a=mid:1', 'a=sctp-port:5000',
    '']


def test_bundled_sections_get_the_first_sections_candidates():
    # Browsers list a bundle's candidates under its first section only; aiortc reads them from
    # the last one. Repeating them there is what lets an answer with candidates connect.
    shared = ice.share_bundle_candidates('\r\n'.join(BUNDLED_ANSWER))
    sections = shared.split('m=')
    assert 'a=candidate:1 1 udp' in sections[2] and 'a=end-of-candidates' in sections[2]
    assert sections[1] == 'm='.join('\r\n'.join(BUNDLED_ANSWER).split('m=')[1:2])
    assert shared.endswith('a=end-of-candidates\r\n') and shared.count('\r\n\r\n') == 0
    assert ice.share_bundle_candidates(shared) == shared          # already shared: as it is
    unix = ice.share_bundle_candidates('\n'.join(BUNDLED_ANSWER))
    assert unix == shared.replace('\r\n', '\n')


@pytest.mark.parametrize('sdp', [
    '\r\n'.join(BUNDLED_ANSWER[:1] + BUNDLED_ANSWER[2:]),                 # no BUNDLE group
    '\r\n'.join(BUNDLED_ANSWER).replace('BUNDLE 0 1', 'BUNDLE 7 1'),       # no such first mid
    '\r\n'.join(BUNDLED_ANSWER).replace('BUNDLE 0 1', 'BUNDLE 0'),         # nothing bundled
    '\r\n'.join(BUNDLED_ANSWER).replace('a=mid:1', 'a=mid:2'),             # 2 is not bundled
    'garbage', ''])
def test_unbundled_or_odd_sdp_passes_unchanged(sdp):
    assert ice.share_bundle_candidates(sdp) == sdp
