"""The teleop page in a real browser (Debian's Chromium through Playwright), against the real
camera_node (test pattern) and bridge_node processes, with a real rclpy subscriber on /cmd_vel.

Every wait is on a condition (a figure on the page, a message on /cmd_vel, a number of video
frames the page has drawn); "stays zero" is checked over a number of drawn frames well beyond
the bridge's 0.5 s deadman, so a page that kept sending would be caught.

Headless Chromium never hides a page by itself (another tab, a minimised window: the page stays
'visible'), so "the page is hidden" is emulated the way the browser reports it: document.hidden
/ visibilityState turn 'hidden' and a visibilitychange event fires. Losing focus is real
(focus emulation off, another tab in front), and so is closing the tab.
"""

import json
import os
import re

from conftest import camera_node, CHROMIUM, chromium, OUTPUT_DIR, wait_for
import pytest

playwright_api = pytest.importorskip('playwright.sync_api')
SCREENSHOTS = os.path.join(OUTPUT_DIR, 'screenshots')
DESKTOP = {'width': 1280, 'height': 800}
PORTRAIT = {'width': 390, 'height': 844}
LANDSCAPE = {'width': 844, 'height': 390}
HOLD_FRAMES = 30   # ~1 s of video at 30 fps: twice the bridge's deadman

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason='chromium is not installed')


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def camera():
    """The real camera node, test pattern at 640x480 / 30 fps, in namespace /camera."""
    with camera_node() as process:
        yield process


@pytest.fixture(scope='module')
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def pages(browser):
    """Open the page in fresh browser contexts (own sessionStorage each); close them after."""
    contexts = []

    def open_page(bridge, viewport=DESKTOP, mobile=False, live=True, connected=True):
        context = browser.new_context(viewport=viewport, is_mobile=mobile, has_touch=mobile,
                                      device_scale_factor=1)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on('pageerror', lambda error: page.errors.append(str(error)))
        page.goto(bridge.http + '/')
        if connected:
            wait_connected(page)
        if live:
            wait_live(page)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def bridge(start_bridge, camera, cmd_vel):
    """A fresh bridge (default config/bridge.yaml, a free port) reading the camera."""
    started = start_bridge()
    cmd_vel.wait_publisher()
    return started


# --- page helpers --------------------------------------------------------------------------------


def wait_connected(page, timeout=15000):
    page.wait_for_function("document.getElementById('conn').dataset.state === 'connected'",
                           timeout=timeout)


def wait_live(page, fps=20, timeout=20000):
    """Wait until the page draws video at more than ``fps`` frames per second."""
    page.wait_for_function(
        f"Number(document.getElementById('stat-fps').dataset.value) > {fps}", timeout=timeout)


def drawn(page) -> int:
    return page.evaluate('window.videoBridge.video.drawn')


def wait_frames(page, count=HOLD_FRAMES, timeout=15000):
    """Wait until the page has drawn ``count`` more video frames (time passing, observably)."""
    start = drawn(page)
    page.wait_for_function(f'window.videoBridge.video.drawn >= {start + count}',
                           timeout=timeout)


def role(page) -> str:
    return page.get_attribute('#role', 'data-role')


def sent(page) -> list:
    """The control messages this page sent (its debug log), newest last."""
    return page.evaluate('window.videoBridge.control.sent.slice()')


def sent_commands(page) -> list:
    return [m for m in sent(page) if '"type":"command"' in m or '"type":"velocity"' in m]


def set_speed(page, value: float):
    page.locator('#speed').fill(str(value))
    page.locator('#video').click()  # focus leaves the slider, as after dragging it


def hide(page, hidden=True):
    """Emulate the page becoming hidden (or visible again), as the browser reports it."""
    page.evaluate("""hidden => {
        for (const [name, value] of [['hidden', hidden],
                                     ['visibilityState', hidden ? 'hidden' : 'visible']]) {
            Object.defineProperty(document, name, { configurable: true, get: () => value });
        }
        document.dispatchEvent(new Event('visibilitychange'));
    }""", hidden)


def screenshot(page, name):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    path = os.path.join(SCREENSHOTS, name)
    page.screenshot(path=path)
    return path


def assert_no_page_errors(page):
    assert not page.errors, page.errors


# --- tests ---------------------------------------------------------------------------------------


def test_video_is_live(bridge, pages):
    page = pages(bridge)
    canvas = page.locator('#video')
    first = canvas.screenshot()
    wait_frames(page, 25)  # about a second of video
    second = canvas.screenshot()
    assert first != second, 'the picture did not change'
    fps = float(page.get_attribute('#stat-fps', 'data-value'))
    assert fps > 20, fps
    page.wait_for_function("document.getElementById('stat-latency').dataset.value !== ''")
    latency = float(page.get_attribute('#stat-latency', 'data-value'))
    assert 0 <= latency < 1.0, f'camera stamp to drawn: {latency} s'
    assert float(page.get_attribute('#stat-rate', 'data-value')) > 100  # kbit/s
    assert page.locator('#video-overlay').is_hidden()
    assert page.locator('#stream option').first.text_content() == 'camera'
    screenshot(page, 'desktop-1280x800.png')
    assert_no_page_errors(page)


@pytest.mark.parametrize('viewport,name', [(PORTRAIT, 'phone-portrait-390x844.png'),
                                           (LANDSCAPE, 'phone-landscape-844x390.png')])
def test_phone_layouts(bridge, pages, viewport, name):
    page = pages(bridge, viewport, mobile=True)
    # Nothing sticks out sideways; the e-stop, the joystick and the video are on screen.
    width = page.evaluate('document.documentElement.scrollWidth')
    assert width <= viewport['width'], f'page is {width}px wide'
    for selector in ('#estop', '#joystick', '#video', '#conn', '#role', '#drive'):
        box = page.locator(selector).bounding_box()
        assert box and box['width'] > 0 and box['height'] > 0, selector
        assert box['x'] >= 0 and box['x'] + box['width'] <= viewport['width'] + 0.5, selector
        assert box['y'] >= 0 and box['y'] + box['height'] <= viewport['height'] + 0.5, selector
    estop = page.locator('#estop').bounding_box()
    assert estop['height'] >= 60 and estop['width'] >= 120, 'the e-stop is a big target'
    assert_stats_on_one_line(page)
    assert_selects_labelled(page)
    screenshot(page, name)
    assert_no_page_errors(page)


def assert_stats_on_one_line(page):
    """Every figure of the stats overlay sits on one line, inside the picture."""
    boxes = page.evaluate("""() => [...document.querySelectorAll('#stats > div')]
        .map(item => { const b = item.getBoundingClientRect();
                       return [b.top, b.height, b.right]; })""")
    pane = page.locator('.video-pane').bounding_box()
    line = page.evaluate("parseFloat(getComputedStyle(document.getElementById('stats'))"
                         '.lineHeight) || 16')
    assert len({round(top) for top, _, _ in boxes}) == 1, f'figures on several lines: {boxes}'
    assert all(height < 1.5 * line for _, height, _ in boxes), f'a figure wraps: {boxes}'
    assert max(right for _, _, right in boxes) <= pane['x'] + pane['width'], boxes


def assert_selects_labelled(page):
    """Both selects have an accessible name and a label one can see."""
    for select, name in (('#transport', 'Video'), ('#stream', 'Stream')):
        assert page.get_by_role('combobox', name=re.compile(name, re.I)).count() >= 1, select
        label = page.locator(f'label:has({select}) .label-text')
        assert label.is_visible() and label.text_content().strip() == name, select


def test_keyboard_drives_and_stops(bridge, pages, cmd_vel):
    page = pages(bridge)
    set_speed(page, 0.6)
    assert page.text_content('#speed-value').strip() == '60 %'

    # Hold ArrowUp: nobody drives, so the key press takes the lock and the car moves forward.
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')
    first = cmd_vel.wait_last(mark, 0.5 * 0.6, 0.0, 'forward at max_linear * speed')
    assert role(page) == 'you'
    # Held well past the 0.5 s deadman: the page's 100 ms heartbeat keeps it moving.
    wait_for(lambda: cmd_vel.last(mark)[0] - first[0] > 1.2, 10, '1.2 s of driving')
    held = [m for m in cmd_vel.since(mark) if m[0] >= first[0]]
    assert all(abs(m[1] - 0.3) < 1e-6 for m in held), 'it never stopped while held'
    # Diagonal: two keys.
    page.keyboard.down('ArrowLeft')
    cmd_vel.wait_last(mark, 0.5 * 0.6, 0.5 * 0.6, 'forward_left')

    # Release: zero at once (the page sends one stop).
    page.keyboard.up('ArrowLeft')
    page.keyboard.up('ArrowUp')
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero after release')
    last = json.loads(sent_commands(page)[-1])
    assert (last['type'], last['name']) == ('command', 'stop'), last

    # Hidden page: zero, and nothing more while the key stays down.
    mark = cmd_vel.mark()
    page.keyboard.down('KeyD')
    cmd_vel.wait_last(mark, 0.0, -1.0 * 0.6, 'turning right (D)')
    hide(page)
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero when the page is hidden')
    stopped = cmd_vel.mark()
    hide(page, False)
    wait_frames(page)
    assert not cmd_vel.moving(cmd_vel.since(stopped)), 'moved again while hidden / still held'
    page.keyboard.up('KeyD')

    # Focus lost (another tab in front): zero.
    cdp = page.context.new_cdp_session(page)
    cdp.send('Emulation.setFocusEmulationEnabled', {'enabled': False})
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowDown')
    cmd_vel.wait_last(mark, -0.5 * 0.6, 0.0, 'backwards')
    other = page.context.new_page()
    other.bring_to_front()
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero when the window loses focus')
    stopped = cmd_vel.mark()
    wait_frames(page)
    assert not cmd_vel.moving(cmd_vel.since(stopped))
    other.close()
    page.bring_to_front()
    page.keyboard.up('ArrowDown')

    # Closing the tab while driving: zero.
    mark = cmd_vel.mark()
    page.keyboard.down('KeyW')
    cmd_vel.wait_last(mark, 0.3, 0.0, 'forward again (W)')
    assert_no_page_errors(page)
    page.close()
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero when the tab closes')


def test_joystick_sends_velocities(bridge, pages, cmd_vel):
    page = pages(bridge)
    box = page.locator('#joystick').bounding_box()
    cx, cy = box['x'] + box['width'] / 2, box['y'] + box['height'] / 2
    mark = cmd_vel.mark()
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx, cy - box['height'])      # beyond the rim: full forward, clamped
    cmd_vel.wait_last(mark, 0.5 * 0.5, 0.0, 'full forward at 50 % speed')
    page.mouse.move(cx + box['width'], cy)        # full right: clockwise
    cmd_vel.wait_last(mark, 0.0, -1.0 * 0.5, 'turning right at 50 % speed')
    assert json.loads(sent_commands(page)[-1])['type'] == 'velocity'
    page.mouse.up()
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero when the joystick is let go')
    assert all(abs(m[1]) <= 0.5 and abs(m[3]) <= 1.0 for m in cmd_vel.since(mark))
    assert_no_page_errors(page)


def test_estop_latches_zero(bridge, pages, cmd_vel):
    page = pages(bridge)
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')
    cmd_vel.wait_last(mark, 0.25, 0.0, 'forward at the default 50 % speed')

    # The button, while the key is held.
    page.click('#estop')
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero after the e-stop button')
    stopped = cmd_vel.mark()
    page.wait_for_selector('#estop-state', state='visible')
    assert page.text_content('#estop-state').strip().lower() == 'e-stop engaged'
    assert page.get_attribute('body', 'data-estop') == 'true'
    page.keyboard.down('ArrowRight')  # a fresh key on top: still nothing
    wait_frames(page)
    assert not cmd_vel.moving(cmd_vel.since(stopped)), 'moved while the e-stop was engaged'
    assert 'emergency stop is engaged' in page.text_content('#notice')
    screenshot(page, 'desktop-estop-1280x800.png')
    page.keyboard.up('ArrowRight')
    page.keyboard.up('ArrowUp')

    # Release, drive again, then Space.
    page.click('#estop-release')
    page.wait_for_selector('#estop-state', state='hidden')
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')
    cmd_vel.wait_last(mark, 0.25, 0.0, 'forward after the release (fresh key press)')
    page.keyboard.press('Space')
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero after Space')
    stopped = cmd_vel.mark()
    page.wait_for_selector('#estop-state', state='visible')
    wait_frames(page)
    assert not cmd_vel.moving(cmd_vel.since(stopped)), 'moved while the e-stop was engaged'
    page.keyboard.up('ArrowUp')
    assert_no_page_errors(page)


def test_second_page_cannot_take_control(bridge, pages, cmd_vel):
    driver = pages(bridge)
    driver.click('#drive')
    driver.wait_for_function("document.getElementById('role').dataset.role === 'you'")
    driver_id = driver.evaluate('window.videoBridge.control.clientId')

    other = pages(bridge)
    assert role(other) == 'other'
    assert other.text_content('#role').strip() == f'Someone else drives ({driver_id})'
    assert other.locator('#drive').is_disabled()
    mark = cmd_vel.mark()
    other.keyboard.down('ArrowUp')
    wait_frames(other)
    assert not cmd_vel.moving(cmd_vel.since(mark)), 'the second page moved the car'
    assert sent_commands(other) == [], 'the second page sent commands'
    assert 'Someone else drives' in other.text_content('#notice')
    other.keyboard.up('ArrowUp')

    # The driver still drives.
    driver.bring_to_front()
    driver.keyboard.down('ArrowUp')
    cmd_vel.wait_last(mark, 0.25, 0.0, 'the driver still drives')
    driver.keyboard.up('ArrowUp')
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero after release')
    assert_no_page_errors(other)


def test_wrong_token_is_refused_visibly(start_bridge, camera, cmd_vel, pages):
    bridge = start_bridge(token='s3cret-token', view_requires_token=False)
    cmd_vel.wait_publisher()
    page = pages(bridge, PORTRAIT, mobile=True)   # watching needs no token here
    sockets = []
    page.on('websocket', lambda ws: sockets.append(ws.url))
    form = page.locator('#token-form')
    form.wait_for(state='visible')
    assert 'needs a token to drive' in page.text_content('#token-label')
    assert page.locator('#drive').is_disabled()

    page.fill('#token-input', 'not-the-token')
    page.click('#token-form button[type=submit]')
    error = page.locator('#token-error')
    error.wait_for(state='visible')
    assert 'invalid token' in error.text_content()
    assert page.evaluate("sessionStorage.getItem('video_bridge.token')") is None
    wait_live(page)  # watching goes on without the refused token
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')
    wait_frames(page, 15)
    page.keyboard.up('ArrowUp')
    assert not cmd_vel.moving(cmd_vel.since(mark))
    screenshot(page, 'phone-token-refused-390x844.png')

    page.fill('#token-input', 's3cret-token')
    page.press('#token-input', 'Enter')
    form.wait_for(state='hidden')
    wait_connected(page)
    page.wait_for_function('window.videoBridge.drive.canDrive === true')
    assert page.evaluate("sessionStorage.getItem('video_bridge.token')") == 's3cret-token'
    assert page.evaluate('localStorage.length') == 0
    # page.evaluate lets Playwright dispatch the page's websocket events while we wait
    wait_for(lambda: page.evaluate('true') and
             any('/control?token=s3cret-token' in url for url in sockets)
             and any('/video/camera?token=s3cret-token' in url for url in sockets), 10,
             'both sockets to present the token')
    page.locator('#video').click()
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')
    cmd_vel.wait_last(mark, 0.25, 0.0, 'driving with the right token')
    page.keyboard.up('ArrowUp')
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero after release')
    assert_no_page_errors(page)


def test_survives_bridge_restart_without_driving_by_itself(start_bridge, camera, cmd_vel, pages):
    first = start_bridge()
    cmd_vel.wait_publisher()
    page = pages(first)
    mark = cmd_vel.mark()
    page.keyboard.down('ArrowUp')       # held through the whole restart, never released
    cmd_vel.wait_last(mark, 0.25, 0.0, 'driving before the restart')

    assert first.process.stop() == 0
    cmd_vel.wait_last(mark, 0.0, 0.0, 'zero from the stopping bridge')
    # Text and state read in the same moment: the countdown gives way to "Reconnecting…" as
    # soon as the (500 ms) retry starts, which a second read could already see.
    text, state = page.wait_for_function("""() => { const conn = document.getElementById('conn');
        return conn.textContent.startsWith('Reconnecting in')
            && [conn.textContent.trim(), conn.dataset.state]; }""", timeout=10000).json_value()
    assert re.fullmatch(r'Reconnecting in \d+ s', text)
    assert state == 'reconnecting'
    page.wait_for_function("document.getElementById('video-overlay').textContent"
                           ".startsWith('Video lost')", timeout=10000)
    screenshot(page, 'desktop-reconnecting-1280x800.png')
    before = page.evaluate('window.videoBridge.control.sentCount')  # none while disconnected

    restart = cmd_vel.mark()
    start_bridge(port=first.port)
    cmd_vel.wait_publisher()
    wait_connected(page, timeout=20000)
    page.wait_for_function('window.videoBridge.video.connectionFrames > 10', timeout=20000)
    wait_live(page)
    assert role(page) == 'none'
    wait_frames(page)                   # the key is still down: nothing may move
    assert not cmd_vel.moving(cmd_vel.since(restart)), 'the page drove by itself'
    count = page.evaluate('window.videoBridge.control.sentCount') - before
    assert count < 100, count
    after = [json.loads(m)['type'] for m in sent(page)[len(sent(page)) - count:]]
    # clock probes and WebRTC signalling (protocol v2) only: nothing that drives
    assert {t for t in after if not t.startswith('webrtc_')} <= {'time'}, \
        f'sent after the reconnect: {after}'

    page.keyboard.up('ArrowUp')         # a new press drives again
    page.keyboard.down('ArrowUp')
    cmd_vel.wait_last(restart, 0.25, 0.0, 'driving after a fresh key press')
    page.keyboard.up('ArrowUp')
    cmd_vel.wait_last(restart, 0.0, 0.0, 'zero after release')
    assert_no_page_errors(page)


TOKEN_FORM_VIEWPORTS = [({'width': 360, 'height': 640}, True),
                        ({'width': 768, 'height': 1024}, True), (DESKTOP, False)]
MUST_SHOW = ('#estop', '#release', '#token-input', '#token-form button[type=submit]', '#speed',
             '#speed-value')


def shown_unclipped(page, selector) -> bool:
    """The whole element is on screen: its centre and all four corners hit-test to it."""
    return page.evaluate("""selector => {
        const element = document.querySelector(selector);
        const box = element.getBoundingClientRect();
        if (box.width <= 4 || box.height <= 4) return false;
        const points = [[box.left + box.width / 2, box.top + box.height / 2],
                        [box.left + 2, box.top + 2], [box.right - 2, box.top + 2],
                        [box.left + 2, box.bottom - 2], [box.right - 2, box.bottom - 2]];
        return points.every(([x, y]) => {
            if (x < 0 || y < 0 || x > innerWidth || y > innerHeight) return false;
            const hit = document.elementFromPoint(x, y);
            return hit !== null && (hit === element || element.contains(hit)
                                    || hit.contains(element));
        });
    }""", selector)


@pytest.mark.parametrize('viewport,mobile', TOKEN_FORM_VIEWPORTS,
                         ids=[f"{v['width']}x{v['height']}" for v, _ in TOKEN_FORM_VIEWPORTS])
def test_token_form_fits_the_viewport(start_bridge, camera, cmd_vel, pages, viewport, mobile):
    """
    Opened without the token (watching needs it, the default): the token form shows, and
    STOP, Release, the token box and the speed stay usable.
    """
    bridge = start_bridge(token='s3cret-token')
    page = pages(bridge, viewport, mobile=mobile, live=False, connected=False)
    page.locator('#token-form').wait_for(state='visible')
    width = page.evaluate('document.documentElement.scrollWidth')
    assert width <= viewport['width'], f'page is {width}px wide'
    for selector in MUST_SHOW:
        if viewport['width'] < 700:   # a phone may scroll the page to reach a control
            page.locator(selector).scroll_into_view_if_needed()
        assert shown_unclipped(page, selector), f'{selector} is clipped or off screen'
    page.evaluate('window.scrollTo(0, 0)')
    if mobile:
        assert_stats_on_one_line(page)
        assert_selects_labelled(page)
    screenshot(page, f"token-form-{viewport['width']}x{viewport['height']}.png")
    assert_no_page_errors(page)
