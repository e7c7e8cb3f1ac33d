"""Self-check of the interop kit, without aiosip_ws.

Proves that the real peers work together (Kamailio <-> JsSIP <-> SIP.js
over ws:// and wss://) and pins down the wire facts our transport must cope
with: Kamailio's Via toward WS clients, its keep-alive frames, its answer to
CRLF keep-alives, and what JsSIP / SIP.js put in REGISTER.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import uuid

import pytest

from tests.support.digest import digest_authorization
from tests.support.kamailio import kamailio
from tests.support.net import free_port, port_open
from tests.support.node import NodeAgent
from tests.support.websocket import Opcode, RawWebSocket

websockets = pytest.importorskip("websockets")

pytestmark = pytest.mark.interop

ALICE = "sip:alice@example.com"
BOB = "sip:bob@example.com"
CAROL = "sip:carol@example.com"


# --------------------------------------------------------------------------
# helpers for hand-written SIP
# --------------------------------------------------------------------------

def header(msg: str, name: str) -> str | None:
    m = re.search(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*?)\r?$", msg, re.M | re.I)
    return m.group(1) if m else None


def headers(msg: str, name: str) -> list[str]:
    return re.findall(rf"^{re.escape(name)}[ \t]*:[ \t]*(.*?)\r?$", msg, re.M | re.I)


def request(method: str, ruri: str, *, user: str, call_id: str, cseq: int,
            to: str | None = None, extra: tuple = (), body: str = "",
            via_host: str = "pytest.invalid", proto: str = "WS") -> str:
    branch = "z9hG4bK" + uuid.uuid4().hex[:12]
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{proto} {via_host};branch={branch}",
        "Max-Forwards: 70",
        f"To: <{to or f'sip:{user}@example.com'}>",
        f"From: <sip:{user}@example.com>;tag=py{cseq}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *extra,
        f"Content-Length: {len(body.encode())}",
        "",
        body,
    ]
    return "\r\n".join(lines)


def register(user: str, *, call_id: str, cseq: int, auth: str | None = None,
             expires: int = 120, via_host: str = "pytest.invalid", proto: str = "WS") -> str:
    extra = [f"Contact: <sip:{user}@{via_host};transport=ws>", f"Expires: {expires}"]
    if auth:
        extra.append(auth)
    return request("REGISTER", "sip:example.com", user=user, call_id=call_id,
                   cseq=cseq, extra=tuple(extra), via_host=via_host, proto=proto)


def response_to(req: str, status: str = "200 OK") -> str:
    lines = [f"SIP/2.0 {status}"]
    lines += [f"Via: {v}" for v in headers(req, "Via")]
    lines += [f"From: {header(req, 'From')}", f"To: {header(req, 'To')};tag=pyuas",
              f"Call-ID: {header(req, 'Call-ID')}", f"CSeq: {header(req, 'CSeq')}",
              "Content-Length: 0", "", ""]
    return "\r\n".join(lines)


async def raw_register(ws: RawWebSocket, user: str, password: str = "secret") -> str:
    """REGISTER over a RawWebSocket, answering the digest challenge."""
    call_id = uuid.uuid4().hex
    await ws.send_text(register(user, call_id=call_id, cseq=1))
    challenge = await ws.recv_text()
    assert challenge.startswith("SIP/2.0 401"), challenge
    auth = digest_authorization(
        header(challenge, "WWW-Authenticate"), method="REGISTER",
        uri="sip:example.com", username=user, password=password)
    await ws.send_text(register(user, call_id=call_id, cseq=2, auth=auth))
    ok = await ws.recv_text()
    assert ok.startswith("SIP/2.0 200"), ok
    return ok


# --------------------------------------------------------------------------
# Kamailio process handling
# --------------------------------------------------------------------------

def test_kamailio_starts_and_leaves_nothing_behind(kamailio_version, tmp_path):
    port = free_port()
    with kamailio(tmp_path, ws_port=port) as peer:
        assert peer.ws_url == f"ws://127.0.0.1:{port}/"
        os.killpg(peer.pid, 0)  # the process group exists
        assert peer.process.poll() is None
        assert "tcp: 127.0.0.1 [127.0.0.1]:%d" % port in peer.log_text()
        pgid = peer.pid
    assert peer.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not port_open("127.0.0.1", port)


def test_kamailio_bad_start_reports_log(kamailio_version, tmp_path):
    bad_cfg = tmp_path / "bad.cfg"
    bad_cfg.write_text("#!KAMAILIO\nthis is not a config\n")
    with pytest.raises(RuntimeError, match=r"exited with code .*log tail"), \
            kamailio(tmp_path, ws_port=free_port(), cfg=bad_cfg, startup_timeout=10):
        pass


# --------------------------------------------------------------------------
# raw Python clients against Kamailio
# --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_python_websockets_register_gets_401_then_200(kamailio_peer):
    async with websockets.connect(kamailio_peer.ws_url, subprotocols=["sip"],
                                  proxy=None, open_timeout=5) as ws:
        assert ws.subprotocol == "sip"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "sip"
        call_id = uuid.uuid4().hex
        await ws.send(register("alice", call_id=call_id, cseq=1))
        challenge = await asyncio.wait_for(ws.recv(), 5)
        assert challenge.startswith("SIP/2.0 401 Unauthorized\r\n"), challenge
        www = header(challenge, "WWW-Authenticate")
        assert re.match(r'Digest realm="127\.0\.0\.1", nonce="[^"]+", qop="auth"$', www), www
        # Kamailio adds received/rport to our Via (RFC 7118 5.3 allows either)
        assert re.search(r";rport=\d+;received=127\.0\.0\.1$", header(challenge, "Via"))

        auth = digest_authorization(www, method="REGISTER", uri="sip:example.com",
                                    username="alice", password="secret")
        await ws.send(register("alice", call_id=call_id, cseq=2, auth=auth))
        ok = await asyncio.wait_for(ws.recv(), 5)
        assert ok.startswith("SIP/2.0 200 OK\r\n"), ok
        contact = header(ok, "Contact")
        assert re.search(r';received="sip:127\.0\.0\.1:\d+;transport=ws"', contact), contact

        # OPTIONS to the server itself
        await ws.send(request("OPTIONS", "sip:127.0.0.1", user="alice",
                              call_id=uuid.uuid4().hex, cseq=1, to="sip:127.0.0.1"))
        opt = await asyncio.wait_for(ws.recv(), 5)
        assert opt.startswith("SIP/2.0 200"), opt


@pytest.mark.asyncio
async def test_kamailio_handshake_response_quirks(kamailio_peer):
    """The 101 carries exactly one `Sec-WebSocket-Protocol: sip`, plus a
    stray `Sia:` header (xhttp renames the Via it adds to the HTTP request)."""
    ws = await RawWebSocket.connect("127.0.0.1", kamailio_peer.ws_port)
    try:
        hdrs = ws.response_headers
        assert [v for k, v in hdrs if k.lower() == "sec-websocket-protocol"] == ["sip"]
        assert any(k == "Sia" and v.startswith("SIP/2.0/TCP 127.0.0.1:") for k, v in hdrs), hdrs
    finally:
        await ws.close()
    # a client that offers no "sip" is refused
    with pytest.raises(ConnectionError):
        await RawWebSocket.connect("127.0.0.1", kamailio_peer.ws_port, subprotocols=("chat",))


@pytest.mark.asyncio
async def test_kamailio_via_toward_ws_client_and_keepalives(kamailio_version, node_agents_ready,
                                                            tmp_path):
    """Kamailio -> WS client: Via `SIP/2.0/WS  127.0.0.1:PORT` (two spaces),
    idle links get WS Ping frames, CRLF keep-alives get a CRLF back."""
    keepalive = 2
    with kamailio(tmp_path, ws_port=free_port(), keepalive=keepalive) as peer:
        carol = await RawWebSocket.connect("127.0.0.1", peer.ws_port)
        try:
            await raw_register(carol, "carol")
            async with NodeAgent("jssip", url=peer.ws_url, aor=ALICE, password="secret") as alice:
                await alice.register()
                await alice.message(CAROL, "hello carol")
                msg = await carol.recv_text(timeout=10)
                assert msg.startswith("MESSAGE sip:carol@pytest.invalid;transport=ws SIP/2.0\r\n"), msg
                vias = headers(msg, "Via")
                assert len(vias) == 2
                # the Kamailio quirk: two spaces after the sent-protocol
                assert re.fullmatch(
                    rf"SIP/2\.0/WS  127\.0\.0\.1:{peer.ws_port};branch=z9hG4bK[^;]+", vias[0]), vias
                assert vias[1].startswith("SIP/2.0/WS ") and ";received=127.0.0.1" in vias[1]
                assert msg.endswith("\r\n\r\nhello carol")
                assert header(msg, "Record-Route") is None  # MESSAGE is not record-routed
                await carol.send_text(response_to(msg))
                sent = await alice.wait_event("messageSent")
                assert sent["status"] == 200

                # idle: Kamailio sends WS Ping frames, no CRLF data frames
                frames = []
                loop = asyncio.get_running_loop()
                # (Kamailio's keep-alive timer runs on its own schedule: allow a slow
                # machine several intervals, and stop as soon as two Pings came)
                end = loop.time() + 4 * keepalive + 6
                while loop.time() < end:
                    try:
                        op, data = await carol.recv_frame(timeout=end - loop.time())
                    except asyncio.TimeoutError:
                        break
                    frames.append((op, data))
                    if op == Opcode.PING:
                        await carol.send_frame(Opcode.PONG, data)
                        if sum(1 for o, _ in frames if o == Opcode.PING) >= 2:
                            break
                pings = [d for op, d in frames if op == Opcode.PING]
                assert len(pings) >= 2, frames
                assert set(pings) == {b"kamailio-ka"}
                assert [f for f in frames if f[0] != Opcode.PING] == [], frames

                # CRLF keep-alive from the client is answered with one CRLF
                for ka in ("\r\n\r\n", "\r\n"):
                    await carol.send_text(ka)
                    op, data = await carol.recv_frame(timeout=3)
                    while op == Opcode.PING:
                        op, data = await carol.recv_frame(timeout=3)
                    assert (op, data) == (Opcode.TEXT, b"\r\n")

                # the JsSIP agent saw the same Ping frames
                ping = await alice.wait_event("wsPing", timeout=keepalive + 5)
                assert ping["data"] == "kamailio-ka"
        finally:
            await carol.close()


@pytest.mark.asyncio
async def test_raw_invite_dialog_is_record_routed(kamailio_peer):
    """INVITE/200/ACK/BYE between two raw WS clients: Kamailio record-routes
    and aliases the Contacts so in-dialog requests find the WS connections."""
    port = kamailio_peer.ws_port
    carol = await RawWebSocket.connect("127.0.0.1", port)
    dave = await RawWebSocket.connect("127.0.0.1", port)
    try:
        await raw_register(carol, "carol")
        await raw_register(dave, "dave")
        call_id = uuid.uuid4().hex
        invite = request("INVITE", "sip:dave@example.com", user="carol", call_id=call_id,
                         cseq=1, to="sip:dave@example.com",
                         extra=("Contact: <sip:carol@pytest.invalid;transport=ws>",))
        await carol.send_text(invite)
        got = await dave.recv_text()
        assert got.startswith("INVITE sip:dave@pytest.invalid;transport=ws SIP/2.0"), got
        rr = header(got, "Record-Route")
        assert re.fullmatch(rf"<sip:127\.0\.0\.1:{port};transport=ws;lr;ftag=py1>", rr), rr
        # add_contact_alias() puts ;alias=ip~port~proto (5 = WS) first
        assert re.fullmatch(r"<sip:carol@pytest\.invalid;alias=127\.0\.0\.1~\d+~5;transport=ws>",
                            header(got, "Contact")), header(got, "Contact")

        ok = response_to(got).replace(
            "Content-Length: 0", f"Record-Route: {rr}\r\n"
            "Contact: <sip:dave@dave.invalid;transport=ws>\r\nContent-Length: 0")
        await dave.send_text(ok)
        ok_at_carol = await carol.recv_text()
        while ok_at_carol.startswith("SIP/2.0 100"):
            ok_at_carol = await carol.recv_text()
        assert ok_at_carol.startswith("SIP/2.0 200"), ok_at_carol
        dave_contact = header(ok_at_carol, "Contact")
        m = re.fullmatch(r"<(sip:dave@dave\.invalid;alias=127\.0\.0\.1~\d+~5;transport=ws)>",
                         dave_contact)
        assert m, dave_contact
        to = header(ok_at_carol, "To")

        def in_dialog(method, ruri, cseq, frm, to_hdr):
            return "\r\n".join([
                f"{method} {ruri} SIP/2.0",
                f"Via: SIP/2.0/WS pytest.invalid;branch=z9hG4bK{uuid.uuid4().hex[:12]}",
                "Max-Forwards: 70", f"Route: {rr}", f"From: {frm}", f"To: {to_hdr}",
                f"Call-ID: {call_id}", f"CSeq: {cseq} {method}", "Content-Length: 0", "", ""])

        await carol.send_text(in_dialog("ACK", m.group(1), 1, header(invite, "From"), to))
        ack = await dave.recv_text()
        assert ack.startswith("ACK sip:dave@dave.invalid;transport=ws SIP/2.0"), ack

        carol_target = re.fullmatch(r"<(.*)>", header(got, "Contact")).group(1)
        await dave.send_text(in_dialog("BYE", carol_target, 2, to, header(invite, "From")))
        bye = await carol.recv_text()
        assert bye.startswith("BYE sip:carol@pytest.invalid;transport=ws SIP/2.0"), bye
        await carol.send_text(response_to(bye))
        bye_ok = await dave.recv_text()
        assert bye_ok.startswith("SIP/2.0 200"), bye_ok
    finally:
        await carol.close()
        await dave.close()


# --------------------------------------------------------------------------
# JsSIP <-> Kamailio <-> SIP.js
# --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_jssip_and_sipjs_exchange_messages(kamailio_peer, node_agents_ready):
    url = kamailio_peer.ws_url
    async with NodeAgent("jssip", url=url, aor=ALICE, user="alice", password="secret",
                         display="Alice") as alice, \
            NodeAgent("sipjs", url=url, aor=BOB, user="bob", password="secret",
                      display="Bob") as bob:
        assert (await alice.wait_event("started"))["version"].startswith("3.13.")
        assert (await bob.wait_event("started"))["version"].startswith("0.21.")
        await alice.wait_event("connected")
        await bob.wait_event("connected")
        await alice.register()
        await bob.register()

        await alice.message(BOB, "hello bob, from JsSIP")
        got = await bob.wait_event("message")
        assert got["body"] == "hello bob, from JsSIP"
        assert got["from"] == ALICE
        assert got["contentType"] == "text/plain"
        assert (await alice.wait_event("messageSent"))["status"] == 200

        await bob.message(ALICE, "hi alice, from SIP.js ✓", content_type="text/plain;charset=utf-8")
        got = await alice.wait_event("message")
        assert got["body"] == "hi alice, from SIP.js ✓"
        assert got["from"] == BOB
        assert got["contentType"] == "text/plain;charset=utf-8"
        assert (await bob.wait_event("messageSent"))["status"] == 200

        # ---- wire facts: JsSIP ----
        reg = alice.sip("out", "REGISTER")
        assert len(reg) == 2  # unauthenticated, then with credentials
        assert header(reg[0], "Authorization") is None
        assert header(reg[1], "Authorization").startswith('Digest algorithm=MD5, username="alice"')
        assert [header(r, "CSeq") for r in reg] == ["1 REGISTER", "2 REGISTER"]
        assert header(reg[0], "Call-ID") == header(reg[1], "Call-ID")
        assert re.fullmatch(r"SIP/2\.0/WS [a-z0-9]+\.invalid;branch=z9hG4bK\d+",
                            header(reg[0], "Via"))
        contact = header(reg[0], "Contact")
        assert re.fullmatch(
            r'<sip:[a-z0-9]+@[a-z0-9]+\.invalid;transport=ws>;\+sip\.ice;reg-id=1;'
            r'\+sip\.instance="<urn:uuid:[0-9a-f-]{36}>";expires=600', contact), contact
        assert header(reg[0], "Supported") == "path,gruu,outbound"
        assert header(reg[0], "Max-Forwards") == "69"
        jmsg = alice.sip("out", "MESSAGE")[0]
        assert re.fullmatch(r"\d+ MESSAGE", header(jmsg, "CSeq"))  # random start
        assert header(jmsg, "Contact") is None

        # ---- wire facts: SIP.js ----
        reg = bob.sip("out", "REGISTER")
        assert [header(r, "CSeq") for r in reg] == ["2 REGISTER", "3 REGISTER"]
        assert re.fullmatch(r"SIP/2\.0/WS [a-z0-9]+\.invalid;branch=z9hG4bK\d+",
                            header(reg[0], "Via"))
        assert re.fullmatch(r"<sip:[a-z0-9]+@[a-z0-9]+\.invalid;transport=ws>;expires=600",
                            header(reg[0], "Contact"))
        assert header(reg[0], "Supported") == "outbound, path, gruu"
        assert header(reg[0], "Max-Forwards") == "70"
        assert header(bob.sip("out", "MESSAGE")[0], "CSeq") == "1 MESSAGE"

        # ---- what Kamailio relayed to the WS clients ----
        for agent in (alice, bob):
            relayed = agent.sip("in", "MESSAGE")[0]
            assert re.match(r"MESSAGE sip:[a-z0-9]+@[a-z0-9]+\.invalid;transport=ws SIP/2\.0",
                            relayed)
            assert headers(relayed, "Via")[0].startswith(
                f"SIP/2.0/WS  127.0.0.1:{kamailio_peer.ws_port};branch=z9hG4bK")

        # ---- unregister; the binding is gone afterwards ----
        await alice.unregister()
        await bob.unregister()
        await alice.message(BOB, "anyone there?")
        failed = await alice.wait_event("messageFailed")
        assert failed["status"] == 404
    assert alice.returncode == 0
    assert bob.returncode == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["jssip", "sipjs"])
async def test_wrong_password_is_rejected(kamailio_peer, node_agents_ready, kind):
    async with NodeAgent(kind, url=kamailio_peer.ws_url, aor=CAROL, password="wrong") as carol:
        await carol.send(cmd="register")
        failed = await carol.wait_event("registrationFailed")
        assert failed["status"] == 401
        assert "registered" not in carol.event_names()


@pytest.mark.asyncio
async def test_without_auth_and_with_proxy_auth(kamailio_version, node_agents_ready, tmp_path):
    # auth=False: no credentials at all
    with kamailio(tmp_path / "noauth", ws_port=free_port(), auth=False) as peer:
        async with NodeAgent("sipjs", url=peer.ws_url, aor=CAROL) as carol:
            await carol.register()
            assert len(carol.sip("out", "REGISTER")) == 1
    # proxy_auth=True: MESSAGE is challenged with 407 and retried
    with kamailio(tmp_path / "proxyauth", ws_port=free_port(), proxy_auth=True) as peer:
        async with NodeAgent("jssip", url=peer.ws_url, aor=ALICE, password="secret") as alice, \
                NodeAgent("sipjs", url=peer.ws_url, aor=BOB, password="secret") as bob:
            await alice.register()
            await bob.register()
            await alice.message(BOB, "j->s")
            await bob.message(ALICE, "s->j")
            assert (await bob.wait_event("message"))["body"] == "j->s"
            assert (await alice.wait_event("message"))["body"] == "s->j"
            assert (await alice.wait_event("messageSent"))["status"] == 200
            assert (await bob.wait_event("messageSent"))["status"] == 200
            for agent in (alice, bob):
                assert agent.sip("in", "SIP/2.0 407 Proxy Authentication Required")
                assert header(agent.sip("out", "MESSAGE")[-1], "Proxy-Authorization")


@pytest.mark.asyncio
async def test_sipjs_crlf_keepalive_is_answered(kamailio_peer, node_agents_ready):
    async with NodeAgent("sipjs", url=kamailio_peer.ws_url, aor=BOB, password="secret",
                         keepalive=1) as bob:
        await bob.register()
        ka = await bob.wait_event("raw", predicate=lambda e: e["dir"] == "out"
                                  and e["data"] == "\r\n\r\n", timeout=8)
        assert ka["binary"] is False
        pong = await bob.wait_event("raw", predicate=lambda e: e["dir"] == "in"
                                    and not e["data"].strip(), timeout=5)
        assert pong["data"] == "\r\n"


# --------------------------------------------------------------------------
# wss://
# --------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_wss_with_test_ca(kamailio_tls, node_agents_ready, certs, tmp_path):
    with kamailio(tmp_path, ws_port=free_port(), wss_port=free_port(),
                  cert=certs.cert, key=certs.key) as peer:
        assert peer.wss_url == f"wss://127.0.0.1:{peer.wss_port}/"
        ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
        async with websockets.connect(peer.wss_url, subprotocols=["sip"], proxy=None,
                                      ssl=ctx, open_timeout=5) as ws:
            assert ws.subprotocol == "sip"
            await ws.send(register("carol", call_id=uuid.uuid4().hex, cseq=1, proto="WSS"))
            challenge = await asyncio.wait_for(ws.recv(), 5)
            assert challenge.startswith("SIP/2.0 401"), challenge
            assert header(challenge, "Via").startswith("SIP/2.0/WSS pytest.invalid;")

        env = {"NODE_EXTRA_CA_CERTS": str(certs.ca_cert)}
        async with NodeAgent("jssip", url=peer.wss_url, aor=ALICE, password="secret",
                             env=env) as alice, \
                NodeAgent("sipjs", url=peer.wss_url, aor=BOB, password="secret",
                          env=env) as bob:
            await alice.register()
            await bob.register()
            await alice.message(BOB, "over wss")
            assert (await bob.wait_event("message"))["body"] == "over wss"
            await bob.message(ALICE, "back over wss")
            assert (await alice.wait_event("message"))["body"] == "back over wss"
            assert (await alice.wait_event("messageSent"))["status"] == 200
            assert (await bob.wait_event("messageSent"))["status"] == 200
            for agent in (alice, bob):
                assert header(agent.sip("out", "REGISTER")[0], "Via").startswith("SIP/2.0/WSS ")
                assert ";transport=ws>" in header(agent.sip("out", "REGISTER")[0], "Contact")
                # toward WSS clients Kamailio writes a single space
                assert headers(agent.sip("in", "MESSAGE")[0], "Via")[0].startswith(
                    f"SIP/2.0/WSS 127.0.0.1:{peer.wss_port};branch=")

        # without the test CA, Node refuses the certificate
        async with NodeAgent("jssip", url=peer.wss_url, aor=CAROL, password="secret",
                             env={"NODE_EXTRA_CA_CERTS": ""}) as carol:
            await carol.send(cmd="register")
            failed = await carol.wait_event("registrationFailed", timeout=15)
            assert failed["cause"] == "Connection Error"
            err = await carol.wait_event("wsError")
            assert "certificate" in err["message"]
