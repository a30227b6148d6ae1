"""One list of error codes (core.protocol.ErrorCode), held to by the code, the docs and the page.

Every machine-readable ``code`` the package can send is a member, and is written as one: found
in the source by the Python parser (what is given to ProtocolError, to the teleop core's
refusals, to the WebRTC service's signalling errors, and as a dict's ``'code'``), a bare
string is refused, and a member the list does not have is too. docs/protocol.md names every member,
and the page's notices (web/js/protocol.js ERROR_TEXT) exist only for real codes.
"""

import ast
import json
import os
import re

from conftest import REPO
from video_bridge.core import protocol
from video_bridge.core.protocol import ErrorCode

PACKAGE = os.path.join(REPO, 'src', 'video_bridge', 'video_bridge')
# Calls that take an error code: the position of the code among their arguments (or code=).
CODE_CALLS = {'ProtocolError': 0, '_signal_error': 0, 'refuse': 2, 'WebRtcError': 0,
              'WebRtcStopped': 1}


def codes_in_source() -> dict:
    """Every string used as an error code in the package: {code: [file:line, ...]}."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            with open(path) as handle:
                tree = ast.parse(handle.read(), path)
            for node in ast.walk(tree):
                candidates = []
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.attr if isinstance(func, ast.Attribute) else \
                        getattr(func, 'id', None)
                    position = CODE_CALLS.get(called)
                    if position is not None and len(node.args) > position:
                        candidates.append(node.args[position])
                    candidates += [k.value for k in node.keywords if k.arg == 'code']
                elif isinstance(node, ast.Dict):
                    candidates += [v for k, v in zip(node.keys, node.values)
                                   if isinstance(k, ast.Constant) and k.value == 'code']
                for value in candidates:
                    where = f'{os.path.relpath(path, REPO)}:{node.lineno}'
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        found.setdefault(value.value, []).append(where)
                    elif isinstance(value, ast.Attribute) and \
                            getattr(value.value, 'id', None) == 'ErrorCode':
                        member = ErrorCode.__members__.get(value.attr)
                        code = member.value if member is not None else f'ErrorCode.{value.attr}'
                        found.setdefault(code, []).append(f'{where} (member)')
    return found


def bare_strings_in_source() -> dict:
    """The codes given as string literals, not as ErrorCode members: {code: [file:line]}."""
    return {code: [w for w in where if not w.endswith('(member)')]
            for code, where in codes_in_source().items()
            if any(not w.endswith('(member)') for w in where)}


def test_every_code_the_package_sends_is_in_the_one_list():
    found = codes_in_source()
    assert len(found) >= 5, f'the scan found almost nothing: {found}'
    unknown = {code: where for code, where in found.items() if code not in set(ErrorCode)}
    assert not unknown, f'codes outside core.protocol.ErrorCode: {unknown}'


def test_every_code_is_given_as_a_member_not_a_string():
    bare = bare_strings_in_source()
    assert not bare, f'use core.protocol.ErrorCode members, not strings: {bare}'


def test_the_list_is_the_wire_strings():
    for code in ErrorCode:
        assert code == code.value and str(code) == code.value and f'{code}' == code.value
        assert re.fullmatch(r'[a-z]+(_[a-z]+)*', code.value), code
    assert json.dumps({'code': ErrorCode.NOT_DRIVER}) == '{"code": "not_driver"}'


def test_each_transport_table_maps_only_codes_to_its_own_values():
    assert set(protocol.VIDEO_CLOSE_CODES) <= set(ErrorCode)
    assert all(4000 <= value < 5000 for value in protocol.VIDEO_CLOSE_CODES.values())
    assert set(protocol.HTTP_STATUSES) <= set(ErrorCode)
    assert all(400 <= value < 600 for value in protocol.HTTP_STATUSES.values())
    assert set(protocol.VIDEO_CLOSE_CODES) == set(protocol.HTTP_STATUSES), \
        'a refusal reads the same on /video and over HTTP'


def test_docs_name_every_code():
    with open(os.path.join(REPO, 'docs', 'protocol.md')) as handle:
        named = set(re.findall(r'`([a-z]+(?:_[a-z]+)+|[a-z]+)`', handle.read()))
    missing = sorted(code.value for code in ErrorCode if code.value not in named)
    assert not missing, f'docs/protocol.md does not name: {missing}'


def test_the_page_has_notices_only_for_real_codes():
    with open(os.path.join(REPO, 'web', 'js', 'protocol.js')) as handle:
        text = handle.read()
    block = text[text.index('export const ERROR_TEXT'):]
    block = block[:block.index('});')]
    keys = set(re.findall(r'^\s+([a-z_]+):', block, re.MULTILINE))
    assert keys and keys <= set(ErrorCode), keys - set(ErrorCode)
