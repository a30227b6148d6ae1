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
    {'stun_urls': ('http://example.org',)},
    {'stun_urls': ('stun:host:99999',)},
    {'stun_urls': ('stun:host?transport=udp',)},
    {'stun_urls': ('turn:host',)},                       # TURN in the STUN list
    {'turn_urls': ('stun:host',), 'turn_secret': 's'},
    {'turn_urls': ('turns:host:443?transport=udp',), 'turn_secret': 's'},
    {'turn_urls': ('turn:host',)},                       # no credentials at all
    {'turn_urls': ('turn:host',), 'turn_username': 'only-a-name'},
    {'turn_urls': ('turn:ho st',), 'turn_secret': 's'},
    {'host_addresses': ('not-an-address',)},
    {'turn_credential_ttl': 0},
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


OFFERED = ('198.51.100.1', '203.0.113.9')


@pytest.mark.parametrize('host,port,transport,why', [
    ('robot-3f2a.local', 5000, 'udp', 'mDNS'),
    ('turn.example.org', 5000, 'udp', 'names'),
    ('127.0.0.1', 5000, 'udp', 'loopback'),
    ('::1', 5000, 'udp', 'loopback'),
    ('169.254.7.7', 5000, 'udp', 'link-local'),
    ('fe80::1', 5000, 'udp', 'link-local'),
    ('224.0.0.251', 5353, 'udp', 'unicast'),
    ('ff02::fb', 5353, 'udp', 'unicast'),
    ('255.255.255.255', 5000, 'udp', 'unicast'),
    ('0.0.0.0', 5000, 'udp', 'unicast'),
    ('240.0.0.1', 5000, 'udp', 'unicast'),
    ('::ffff:192.0.2.1', 5000, 'udp', 'IPv4-mapped'),
    ('2001:db8::1', 5000, 'udp', 'IPv6'),
    ('192.0.2.1', 0, 'udp', 'port'),
    ('192.0.2.1', 9, 'tcp', 'UDP'),
])
def test_remote_candidates_the_bridge_would_not_reach_are_refused(host, port, transport, why):
    problem = ice.remote_candidate_problem(host, port, transport, OFFERED)
    assert problem is not None and why in problem, problem


@pytest.mark.parametrize('host,offered', [
    ('192.0.2.1', OFFERED), ('10.1.2.3', OFFERED), ('100.64.0.9', OFFERED),
    ('127.0.0.1', ('127.0.0.1',)), ('169.254.7.7', ('169.254.1.1',)),
    ('2001:db8::1', OFFERED + ('2001:db8::2',)),
])
def test_remote_candidates_on_reachable_unicast_addresses_are_taken(host, offered):
    assert ice.remote_candidate_problem(host, 40000, 'UDP', offered) is None


OFFER = ('v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n'
         'm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n'
         'a=candidate:1 1 udp 2130706431 198.51.100.1 40000 typ host\r\n'
         'a=candidate:2 1 udp 1694498815 203.0.113.9 40001 typ srflx raddr 198.51.100.1 '
         'rport 40000\r\n'
         'm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n')


def test_offered_addresses_are_those_of_the_offers_candidates():
    assert ice.offered_addresses(OFFER) == OFFERED


ANSWER = ('v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n'
          'a=fingerprint:sha-256 AA:BB\r\n'
          'm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\n'
          'a=ice-pwd:0123456789abcdef012345\r\n'
          'a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host\r\n'
          'a=candidate:2 1 udp 2130706431 robot.local 50001 typ host\r\n'
          'a=candidate:3 1 udp 2130706431 127.0.0.1 50002 typ host\r\n'
          'a=candidate:4 1 udp\r\n'
          'm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n'
          'a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\n'
          'a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host\r\n')


def test_an_answers_candidates_pass_the_same_checks():
    sdp, refused, count = ice.filter_remote_candidates(ANSWER, OFFERED)
    kept = [line for line in sdp.split('\r\n') if line.startswith('a=candidate:')]
    assert kept == ['a=candidate:1 1 udp 2130706431 192.0.2.7 50000 typ host'] * 2
    assert count == 1, 'one transport address, listed under both sections'
    assert len(refused) == 3 and 'mDNS' in refused[0] and 'loopback' in refused[1]
    assert 'a=mid:1' in sdp and sdp.count('a=ice-pwd:') == 2, 'the rest is untouched'


def test_an_incomplete_answer_is_named():
    assert ice.answer_problem(ANSWER) is None
    assert 'fingerprint' in ice.answer_problem(ANSWER.replace('a=fingerprint:sha-256 AA:BB\r\n',
                                                              ''))
    assert 'fingerprint' in ice.answer_problem(ANSWER.replace('sha-256', 'md5'))
    assert 'ice-pwd' in ice.answer_problem(ANSWER.replace('a=ice-pwd:', 'a=x-pwd:'))
    assert 'ice-ufrag' in ice.answer_problem(ANSWER.replace('a=ice-ufrag:', 'a=x-ufrag:'))
    assert 'no media' in ice.answer_problem('v=0\r\n')
    rejected = ANSWER.replace('m=application 9', 'm=application 0').split(
        'm=application')[0] + 'm=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n'
    assert ice.answer_problem(rejected) is None, 'a rejected section needs nothing'
