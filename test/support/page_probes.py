"""JavaScript the tests and the benchmarks run in the page (Playwright ``page.evaluate``).

RECEIVER_STATS: Chromium's own view of the video it receives (getStats inbound-rtp: frames
received, decoded and dropped, freezes, lost, NACKed and resent packets, the jitter buffer) and
the round trip of the nominated candidate pair. ``sender_media`` is the bridge's side of the
same video, from /api/streams.
"""

import json
import urllib.request

RECEIVER_STATS = """async () => { const pc = window.videoBridge.webrtc.pc; const out = {};
    if (!pc) return out;
    (await pc.getStats()).forEach((e) => {
      if (e.type === 'inbound-rtp' && e.kind === 'video') {
        for (const k of ['framesReceived', 'framesDecoded', 'framesDropped', 'keyFramesDecoded',
                         'freezeCount', 'totalFreezesDuration', 'nackCount', 'pliCount',
                         'firCount', 'packetsLost', 'packetsReceived',
                         'retransmittedPacketsReceived', 'jitterBufferDelay',
                         'jitterBufferEmittedCount', 'bytesReceived']) out[k] = e[k] ?? 0; }
      if (e.type === 'candidate-pair' && e.nominated && e.state === 'succeeded') {
        out.rtt = e.currentRoundTripTime ?? 0; } });
    return out; }"""


def sender_media(base_url: str, token: str) -> dict:
    """The bridge's frames in and its one WebRTC peer's media counters (/api/streams)."""
    request = urllib.request.Request(f'{base_url}/api/streams',
                                     headers={'Authorization': f'Bearer {token}'})
    with urllib.request.urlopen(request, timeout=5) as response:
        document = json.load(response)
    media = list(document.get('webrtc', {}).get('media', {}).values())
    return {'frames_in': sum(s['frames_in'] for s in document['streams']),
            **(media[0] if media else {})}
