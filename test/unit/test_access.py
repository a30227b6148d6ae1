"""Tests for video_bridge.core.access: the token, its rights and throttle, Host and Origin."""

from dataclasses import replace
import re

import pytest
from support.clocks import ManualClock
from video_bridge.core.access import AccessPolicy, client_key, generate_token, is_loopback, \
    load_token, Rights, TOKEN_ENV, TokenAttempts, tokens_equal, TOO_MANY_ATTEMPTS, \
    WRONG_TOKEN_BURST, WRONG_TOKENS_PER_SECOND

TOKEN = 's3cret-Token'


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / 'token'
    path.write_text('from-file\nsecond line\n')
    return str(path)


# ---------------------------------------------------------------- load_token

def test_load_token_reads_the_first_line_of_the_file_before_the_environment(token_file):
    assert load_token(token_file, {TOKEN_ENV: 'from-env'}) == 'from-file'


def test_load_token_falls_back_to_the_environment():
    assert load_token('', {TOKEN_ENV: ' from-env\n'}) == 'from-env'


def test_load_token_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, 'process-env')
    assert load_token() == 'process-env'
    monkeypatch.delenv(TOKEN_ENV)
    assert load_token() == ''


def test_load_token_is_empty_when_nothing_names_one():
    assert load_token('', {}) == ''


def test_load_token_takes_no_value_a_parameter_could_carry():
    with pytest.raises(TypeError):
        load_token('value', 'file', {})  # the token is never a ROS parameter


@pytest.mark.parametrize('content', ['', '\n', '   \nsecond line\n'])
def test_load_token_refuses_an_empty_file(tmp_path, content):
    path = tmp_path / 'token'
    path.write_text(content)
    with pytest.raises(ValueError, match='empty'):
        load_token(str(path), {TOKEN_ENV: 'from-env'})


def test_load_token_refuses_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match='cannot read'):
        load_token(str(tmp_path / 'missing'), {TOKEN_ENV: 'from-env'})


def test_load_token_refuses_a_directory(tmp_path):
    with pytest.raises(ValueError, match='cannot read'):
        load_token(str(tmp_path), {TOKEN_ENV: 'from-env'})


def test_generated_tokens_are_random_url_safe_and_long():
    tokens = {generate_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(len(t) >= 22 and re.fullmatch(r'[A-Za-z0-9_-]+', t) for t in tokens)


@pytest.mark.parametrize('host, loopback', [
    ('127.0.0.1', True), ('127.1.2.3', True), ('::1', True), ('[::1]', True),
    ('localhost', True), ('LOCALHOST.', True), ('0.0.0.0', False), ('::', False),
    ('192.0.2.10', False), ('robot.local', False), ('', False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


# ---------------------------------------------------------------- token and view rules

OPEN = AccessPolicy()
DRIVE_TOKEN = AccessPolicy(token=TOKEN, view_requires_token=False)
VIEW_TOKEN = AccessPolicy(token=TOKEN)
MISSING, WRONG, RIGHT = None, 's3cret-token', TOKEN


@pytest.mark.parametrize('policy, presented, token_problem, view_problem, may_drive', [
    (OPEN, MISSING, None, None, True),
    (OPEN, '', None, None, True),
    (OPEN, 'anything', None, None, True),
    (DRIVE_TOKEN, MISSING, 'token required', None, False),
    (DRIVE_TOKEN, '', 'token required', None, False),
    (DRIVE_TOKEN, WRONG, 'invalid token', 'invalid token', False),
    (DRIVE_TOKEN, RIGHT + ' ', 'invalid token', 'invalid token', False),
    (DRIVE_TOKEN, RIGHT, None, None, True),
    (VIEW_TOKEN, MISSING, 'token required', 'token required', False),
    (VIEW_TOKEN, '', 'token required', 'token required', False),
    (VIEW_TOKEN, WRONG, 'invalid token', 'invalid token', False),
    (VIEW_TOKEN, RIGHT, None, None, True),
])
def test_token_rules(policy, presented, token_problem, view_problem, may_drive):
    assert policy.token_problem(presented) == token_problem
    assert policy.view_problem(presented) == view_problem
    assert policy.may_drive(presented) is may_drive


def test_watching_needs_the_token_by_default():
    assert AccessPolicy(token=TOKEN).view_problem(None) == 'token required'
    assert AccessPolicy().view_problem(None) is None   # no token (loopback): open to all


NONE = Rights(view=False, drive=False, relay=False, topic_streams=False)


@pytest.mark.parametrize('policy, presented, rights', [
    # no token (loopback, or allow_anonymous_driving): everybody may do everything
    (OPEN, MISSING, Rights(True, True, True, True)),
    (OPEN, 'anything', Rights(True, True, True, True)),
    # a token, view_requires_token true (the default): nothing without it
    (VIEW_TOKEN, MISSING, replace(NONE, problem='token required')),
    (VIEW_TOKEN, WRONG, replace(NONE, problem='invalid token')),
    (VIEW_TOKEN, RIGHT, Rights(True, True, True, True)),
    # view_requires_token false: anyone watches the configured streams, nothing more
    (DRIVE_TOKEN, MISSING, Rights(view=True, drive=False, relay=False, topic_streams=False)),
    (DRIVE_TOKEN, WRONG, replace(NONE, problem='invalid token')),
    (DRIVE_TOKEN, RIGHT, Rights(True, True, True, True)),
])
def test_rights_relay_and_topic_streams_only_for_token_holders(policy, presented, rights):
    assert policy.rights(presented) == rights


def test_the_summary_says_who_may_watch_without_the_token():
    assert 'need the token' in VIEW_TOKEN.summary(True)
    opened = DRIVE_TOKEN.summary(True)
    assert 'view_requires_token is false' in opened and 'may watch' in opened
    assert 'anyone who reaches the port may watch, drive' in OPEN.summary(True)
    assert 'anyone on this machine' in OPEN.summary(False)
    assert all(TOKEN not in p.summary(True) for p in (OPEN, DRIVE_TOKEN, VIEW_TOKEN))


def test_tokens_are_compared_as_digests_so_the_length_takes_no_shortcut():
    assert tokens_equal(TOKEN, TOKEN)
    assert not tokens_equal(TOKEN, TOKEN + 'x')
    assert not tokens_equal('', TOKEN)


def test_wrong_tokens_past_the_burst_are_refused_unchecked_until_the_budget_refills():
    clock = ManualClock()
    policy = AccessPolicy(token=TOKEN, attempts=TokenAttempts(burst=3, per_second=1.0,
                                                              clock=clock))
    assert [policy.token_problem(WRONG, '192.0.2.1') for _ in range(3)] == ['invalid token'] * 3
    # the budget is spent: even the right token is not looked at
    assert policy.token_problem(RIGHT, '192.0.2.1') == TOO_MANY_ATTEMPTS
    assert policy.rights(RIGHT, '192.0.2.1').problem == TOO_MANY_ATTEMPTS
    assert policy.token_problem(RIGHT, '192.0.2.2') is None   # another client is not affected
    assert policy.token_problem(None, '192.0.2.1') == 'token required'
    clock.now += 1.0   # one try a second
    assert policy.token_problem(WRONG, '192.0.2.1') == 'invalid token'
    assert policy.token_problem(RIGHT, '192.0.2.1') == TOO_MANY_ATTEMPTS
    clock.now += 1.0
    assert policy.token_problem(RIGHT, '192.0.2.1') is None   # right tokens cost nothing
    assert policy.token_problem(RIGHT, '192.0.2.1') is None


def test_a_client_is_shut_out_exactly_while_its_tokens_would_be_refused_unchecked():
    """What the listener asks before a TLS handshake: the same budget, and asking is free."""
    clock = ManualClock()
    attempts = TokenAttempts(burst=2, per_second=1.0, clock=clock)
    policy = AccessPolicy(token=TOKEN, attempts=attempts)
    assert not attempts.shut_out('192.0.2.1')
    policy.token_problem(WRONG, '192.0.2.1')
    assert not attempts.shut_out('192.0.2.1')
    policy.token_problem(WRONG, '192.0.2.1')
    assert attempts.shut_out('192.0.2.1') and attempts.shut_out('192.0.2.1')
    assert attempts.refused == 0                     # asking is not a refused token
    assert not attempts.shut_out('192.0.2.2')
    assert policy.token_problem(RIGHT, '192.0.2.1') == TOO_MANY_ATTEMPTS
    clock.now += 1.0
    assert not attempts.shut_out('192.0.2.1')


def test_wrong_tokens_are_throttled_to_the_stated_rate():
    """In 60 s of trying as fast as it can, one client gets burst + 60 x rate tokens checked."""
    clock = ManualClock()
    attempts = TokenAttempts(clock=clock)
    policy = AccessPolicy(token=TOKEN, attempts=attempts)
    checked = 0
    for step in range(60 * 730):   # ~730 tries a second, the rate seen without the throttle
        clock.now = 100.0 + step / 730
        checked += policy.token_problem(WRONG, '198.51.100.7') == 'invalid token'
    assert checked <= WRONG_TOKEN_BURST + 60 * WRONG_TOKENS_PER_SECOND + 1
    assert attempts.refused >= 60 * 730 - checked


def test_ipv6_clients_are_counted_per_64_and_memory_is_bounded():
    clock = ManualClock()
    attempts = TokenAttempts(burst=1, max_clients=8, clock=clock)
    attempts.failed('2001:db8:1:2::1')
    assert attempts.locked('2001:db8:1:2::ffff')     # same /64
    assert not attempts.locked('2001:db8:1:3::1')    # another /64
    assert client_key('::ffff:192.0.2.5') == '192.0.2.5'
    for n in range(100):
        attempts.failed(f'203.0.113.{n}')
    assert len(attempts) == 8


def test_a_non_ascii_token_is_compared_exactly():
    policy = AccessPolicy(token='clé-ü')
    assert policy.may_drive('clé-ü')
    assert policy.token_problem('cle-u') == 'invalid token'


def test_token_required_tells_whether_a_token_is_set():
    assert OPEN.token_required is False
    assert DRIVE_TOKEN.token_required is True


def test_the_token_never_appears_in_the_policys_text():
    for policy in (DRIVE_TOKEN, VIEW_TOKEN, AccessPolicy(TOKEN, False, ('https://a.example',))):
        for text in (repr(policy), str(policy), f'{policy}', repr([policy]), '%s' % (policy,)):
            assert TOKEN not in text
            assert 'AccessPolicy' in text


def test_the_policys_text_still_tells_whether_a_token_is_set():
    assert 'token=set' in repr(DRIVE_TOKEN)
    assert 'token=none' in repr(OPEN)


# ---------------------------------------------------------------- origins

@pytest.mark.parametrize('policy', [OPEN, AccessPolicy(allowed_origins=('https://a.example',))])
def test_requests_without_an_origin_are_not_checked(policy):
    assert policy.origin_allowed(None, 'robot:8080')
    assert policy.origin_allowed(None, None)


@pytest.mark.parametrize('origin, host, allowed', [
    ('http://robot:8080', 'robot:8080', False),      # robot is not an allowed host name
    ('http://10.0.0.5:8080', '10.0.0.5:8080', True),
    ('https://10.0.0.5:8080', '10.0.0.5:8080', False),  # the scheme counts
    ('ftp://10.0.0.5:8080', '10.0.0.5:8080', False),
    ('http://10.0.0.5:8080/', '10.0.0.5:8080', True),
    ('http://127.0.0.1:8080', '127.0.0.1:8080', True),
    ('http://localhost:8080', '127.0.0.1:8080', True),  # the same machine
    ('http://127.0.0.1:8080', 'localhost:8080', True),
    ('http://[::1]:8080', '[::1]:8080', True),
    ('http://10.0.0.5', '10.0.0.5', True),
    ('http://10.0.0.5:80', '10.0.0.5', True),
    ('http://10.0.0.5:8081', '10.0.0.5:8080', False),
    ('http://10.0.0.5', '10.0.0.5:8080', False),
    ('http://evil.example:8080', 'evil.example:8080', False),  # DNS rebinding
    ('http://evil.example', '10.0.0.5:8080', False),
    ('null', '10.0.0.5:8080', False),
    ('', '10.0.0.5:8080', False),
    ('http://10.0.0.5:8080', None, False),
    ('http://10.0.0.5:8080', '', False),
])
def test_by_default_only_the_bridges_own_origin_is_allowed(origin, host, allowed):
    assert OPEN.origin_allowed(origin, host) is allowed


def test_the_own_origin_follows_the_scheme_the_bridge_serves():
    assert OPEN.origin_allowed('https://10.0.0.5:8443', '10.0.0.5:8443', 'https')
    assert not OPEN.origin_allowed('http://10.0.0.5:8443', '10.0.0.5:8443', 'https')


def test_allowed_host_names_give_their_own_origin():
    policy = AccessPolicy(allowed_hosts=('Robot', 'robot.local'))
    assert policy.origin_allowed('http://robot:8080', 'robot:8080')
    assert policy.origin_allowed('http://ROBOT.local:8080', 'robot.local:8080')


@pytest.mark.parametrize('origin, allowed', [
    ('https://ops.example.org', True),
    ('HTTPS://OPS.Example.org', True),
    ('https://ops.example.org/', True),
    ('https://ops.example.org:443', True),
    ('http://localhost:3000', True),
    ('http://127.0.0.1:3000', True),
    ('http://ops.example.org', False),
    ('https://ops.example.org:8443', False),
    ('https://evil.example', False),
])
def test_an_allow_list_adds_exactly_its_origins(origin, allowed):
    policy = AccessPolicy(allowed_origins=('https://ops.example.org/', 'http://LOCALHOST:3000'))
    assert policy.origin_allowed(origin, '10.0.0.5:8080') is allowed


def test_an_allow_list_keeps_the_bridges_own_origin():
    policy = AccessPolicy(allowed_origins=('http://ops:8094',))
    assert policy.origin_allowed('http://10.0.0.5:8080', '10.0.0.5:8080')
    assert policy.origin_allowed('http://ops:8094', '10.0.0.5:8080')


@pytest.mark.parametrize('origin', ['https://anything.example', 'null', 'http://robot:1'])
def test_a_star_admits_every_origin(origin):
    assert AccessPolicy(allowed_origins=('*',)).origin_allowed(origin, 'robot:8080')


# ---------------------------------------------------------------- hosts

@pytest.mark.parametrize('host, allowed', [
    (None, True), ('10.0.0.5', True), ('10.0.0.5:8080', True), ('[::1]:8080', True),
    ('[2001:db8::1]', True), ('localhost:8080', True), ('LOCALHOST', True),
    ('robot:8080', True), ('ROBOT.local.', True), ('evil.example:8080', False),
    ('robot.evil.example', False), ('', False), ('a b', False), ('robot:port', False),
    ('user@robot', False), ('robot/x', False), ('[::1', False)])
def test_host_must_be_an_ip_localhost_or_an_allowed_name(host, allowed):
    assert AccessPolicy(allowed_hosts=('robot', 'robot.local')).host_allowed(host) is allowed


def test_a_star_admits_every_host():
    assert AccessPolicy(allowed_hosts=('*',)).host_allowed('anything.example:1')


# ---------------------------------------------------------------- CORS

def test_cors_answers_only_listed_origins():
    policy = AccessPolicy(cors_origins=('https://dash.example.org',))
    assert policy.cors_origin('https://dash.example.org') == 'https://dash.example.org'
    assert policy.cors_origin('http://dash.example.org') is None
    assert policy.cors_origin(None) is None
    assert OPEN.cors_origin('https://dash.example.org') is None
    assert AccessPolicy(cors_origins=('*',)).cors_origin('https://x.example') == '*'
