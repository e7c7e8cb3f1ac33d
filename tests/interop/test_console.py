"""The console in headless Chromium (serve, the browser and two JsSIP pages in one
private network namespace): the login form, the ladder of a real JsSIP call drawn as SVG
(arrows in order with their labels, one column per party), updated live as the call ends,
the message shown as text on a click; a From display name of ``</svg><script>`` stays
text; a page of another origin cannot open the admin WebSocket.

With ``AIOSIP_WS_SCREENSHOT=FILE`` the test also saves the ladder as a PNG: that is how
docs/console-ladder.png is made (docs/console.rst)."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import urllib.parse

import pytest
from websockets.asyncio.client import connect

from tests.interop.conftest import answered_jssip_call, browser_beside_serve
from tests.support.browser import Browser
from tests.support.net import netns_socket
from tests.support.sip import recv

pytestmark = pytest.mark.interop

TOKEN = 'console-token-0123456789'
ALICE, BOB = 'sip:alice@example.com', 'sip:bob@example.com'


class Page:
    """A plain page of the browser, driven over DevTools."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser, self.session = browser, session

    @classmethod
    async def open(cls, browser: Browser, url: str) -> Page:
        target = (await browser.command('Target.createTarget', {'url': url}))['targetId']
        session = (await browser.command('Target.attachToTarget',
                                         {'targetId': target, 'flatten': True}))['sessionId']
        return cls(browser, session)

    async def eval(self, expression: str, *, wait: bool = False):
        answer = await self.browser.command('Runtime.evaluate', {
            'expression': expression, 'returnByValue': True, 'awaitPromise': wait},
            session=self.session)
        assert 'exceptionDetails' not in answer, answer['exceptionDetails']
        return answer['result'].get('value')

    async def until(self, expression: str, timeout: float = 10.0):
        async def poll():
            while True:
                value = await self.eval(expression)
                if value:
                    return value
                await asyncio.sleep(0.1)
        return await asyncio.wait_for(poll(), timeout)

    async def go(self, url: str) -> None:
        await self.browser.command('Page.navigate', {'url': url}, session=self.session)
        await self.until("document.readyState === 'complete' && location.href === %s"
                         % json.dumps(url))


@pytest.fixture
async def console(tmp_path, serve_process, users_file, node_agents_ready):
    async with browser_beside_serve(tmp_path, serve_process, '--users', str(users_file),
                                    '--realm', 'example.com', '--admin-token',
                                    TOKEN) as parts:
        yield parts


LABELS = "[...document.querySelectorAll('#ladder g.message text.label')].map(t => t.textContent)"


async def test_the_ladder_of_a_jssip_call(console):
    browser, url, process = console
    base = 'http://' + url.split('//', 1)[1].rstrip('/')
    alice, bob = await answered_jssip_call(browser, url)

    page = await Page.open(browser, base + '/calls/login')
    await page.until("document.readyState === 'complete' && !!document.getElementById('token')")
    await page.eval("document.getElementById('token').value = %s; "
                    "document.getElementById('login').requestSubmit()" % json.dumps(TOKEN))
    await page.until("location.pathname === '/calls' && document.readyState === 'complete'")
    assert await page.eval("document.cookie") == ''                 # HttpOnly: not for scripts
    rows = await page.eval("fetch('/calls.json').then(r => r.json())", wait=True)
    [call] = [row for row in rows if row['method'] == 'INVITE']
    await page.go(base + '/calls/' + urllib.parse.quote(call['call_id'], safe=''))
    await page.until("document.getElementById('live').textContent === 'live'")
    before = await page.eval(LABELS)
    assert before[0] == 'INVITE' and '200' in before and 'BYE' not in before

    await alice.hangup()                                            # the page follows live
    await bob.wait_event('ended', timeout=10)
    labels = await page.until("(%s).includes('BYE') && (%s).filter(l => l === '200')"
                              ".length >= 4 && %s" % (LABELS, LABELS, LABELS))
    wanted = iter(['INVITE', '407', 'ACK', 'INVITE', '100', 'INVITE', '180', '180', '200',
                   '200', 'ACK', 'ACK', 'BYE', 'BYE', '200', '200'])
    step = next(wanted)
    for label in labels:                                   # in this order, others between
        if label == step:
            step = next(wanted, None)
    assert step is None, labels
    parties = await page.eval("[...document.querySelectorAll('#ladder g.party text')]"
                              ".map(t => t.textContent)")
    assert len(parties) == 3 and parties[1] == 'serve', parties   # alice, serve, bob
    assert all(p.startswith('ws 127.0.0.1:') for p in (parties[0], parties[2]))
    await page.eval("document.querySelector('#ladder g.message')"
                    ".dispatchEvent(new MouseEvent('click'))")
    shown = await page.eval("document.getElementById('message').textContent")
    assert shown.startswith('INVITE sip:bob@example.com SIP/2.0')
    screenshot = os.environ.get('AIOSIP_WS_SCREENSHOT')
    if screenshot:
        await browser.command('Emulation.setDeviceMetricsOverride', {
            'width': 1100, 'height': 900, 'deviceScaleFactor': 1, 'mobile': False},
            session=page.session)
        image = await browser.command('Page.captureScreenshot', {'format': 'png'},
                                      session=page.session)
        with open(screenshot, 'wb') as out:
            out.write(base64.b64decode(image['data']))

    # a From display name that is markup: shown as text, never run
    sock = netns_socket(process.proc.pid, __import__('socket').SOCK_STREAM,
                        connect=('127.0.0.1', int(base.rsplit(':', 1)[1])))
    async with connect(url, sock=sock, subprotocols=['sip'], proxy=None) as carol:
        host = 'carol.invalid'
        await carol.send('OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WS %s;branch=z9hG4bKx'
                         '\r\nFrom: "</svg><script>window.pwned=1</script>" <sip:carol@example'
                         '.com>;tag=x\r\nTo: <sip:example.com>\r\nCall-ID: xss-1\r\nCSeq: 1 '
                         'OPTIONS\r\nMax-Forwards: 70\r\n\r\n' % host)
        await recv(carol)
    await asyncio.sleep(0.2)
    await page.go(base + '/calls/xss-1')
    await page.until("document.querySelectorAll('#ladder g.message').length === 2")
    await page.eval("document.querySelector('#ladder g.message')"
                    ".dispatchEvent(new MouseEvent('click'))")
    shown = await page.eval("document.getElementById('message').textContent")
    assert 'From: "</svg><script>window.pwned=1</script>"' in shown
    assert await page.eval("window.pwned === undefined && !document.querySelector('#message script')")
    await page.go(base + '/calls')
    assert await page.eval("window.pwned === undefined")

    # another origin: no admin WebSocket, whatever it tries
    other = await Page.open(browser, 'about:blank')
    outcome = await other.eval(
        "new Promise(done => { const ws = new WebSocket(%s, ['aiosip-ws.admin']); "
        "ws.onopen = () => done('open'); ws.onerror = () => done('refused'); })"
        % json.dumps(url), wait=True)
    assert outcome == 'refused'
