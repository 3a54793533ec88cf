"""Headless Chromium: the connection quality indicator of the meeting page
(sfu/diagnostics.py, the ``connection_quality`` event) changes on the one page whose
link loses packets, and the reason names the loss, while the other page stays good.

Two pages (Alice, Bob) of one Chromium join a meeting on loopback. Bob's media link
is found from his own page (the local candidate of his selected ICE pair: a test
hook around RTCPeerConnection, added before the page loads) and shaped with tc on
the loopback interface of the test's private namespace: a random ``LOSS`` of every
UDP datagram to or from his port, both ways, is dropped; Alice's port, the SFU's
other traffic and the WebSocket are untouched.

The kernel here has no ``sch_netem`` (CONFIG_NET_SCH_NETEM is not set), so the random
loss netem would make comes from the classifier: a classic BPF program (``tc filter
... bpf bytecode``) matches Bob's UDP port and draws ``ld rand`` (SKF_AD_RANDOM), and
sends the drawn share into an HTB class whose pfifo holds nothing (limit 0): dropped,
as netem's ``loss`` would. Everything stays on loopback in the namespace."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from .cdp import Chromium, Tab
from .test_meeting_browser import MEDIA_TIMEOUT, diagnose, dev_sfu, wait_media  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(150)]

LOSS = 0.25  # share of Bob's datagrams dropped, each way
QUALITY_TIMEOUT = 45.0

# before the page's own script: keep every RTCPeerConnection the page makes, so the
# test can read its selected candidate pair (nothing of this is in the page itself)
HOOK = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__testPcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Native(...args);
    window.__testPcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Native.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Native);
})();
"""

LOCAL_PORT = """
(async () => {
  const pc = window.__testPcs[window.__testPcs.length - 1];
  if (!pc) return null;
  const stats = await pc.getStats();
  let port = null;
  stats.forEach((s) => {
    if (s.type !== "transport" || !s.selectedCandidatePairId) return;
    const pair = stats.get(s.selectedCandidatePairId);
    const local = pair && stats.get(pair.localCandidateId);
    if (local) port = local.port;
  });
  return port;
})()
"""


def loss_program(ports: list[int], share: float) -> str:
    """Classic BPF for cls_bpf (the packet from its Ethernet header; lo has one):
    IPv4 UDP with a source or destination port in ``ports``, and a random draw below
    ``share``: match (-1: the filter's class); anything else: 0, not matched."""
    threshold = int(share * 2**32)
    code: list[tuple[int, int, int, int]] = []
    ret0 = "RET0"
    rand = "RAND"
    prog: list[tuple] = [
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, ret0, 0x0800),  # IPv4?
        (0x30, 0, 0, 23),  # ldb [23]: protocol
        (0x15, 0, ret0, 17),  # UDP?
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): IP header length
        (0x48, 0, 0, 14),  # ldh [x+14]: source port
    ]
    prog += [(0x15, rand, 0, p) for p in ports]
    prog.append((0x48, 0, 0, 16))  # ldh [x+16]: destination port
    prog += [(0x15, rand, 0, p) for p in ports]
    prog.append((0x05, 0, 0, ret0))  # ja RET0
    labels = {rand: len(prog)}
    prog += [
        (0x20, 0, 0, 0xFFFFF000 + 56),  # ld rand (SKF_AD_OFF + SKF_AD_RANDOM)
        (0x35, ret0, 0, threshold),  # jge threshold: not dropped
        (0x06, 0, 0, 0xFFFFFFFF),  # ret -1: matched
    ]
    labels[ret0] = len(prog)
    prog.append((0x06, 0, 0, 0))  # ret 0

    def rel(target, index):
        return labels[target] - index - 1 if isinstance(target, str) else target

    for i, (op, jt, jf, k) in enumerate(prog):
        if op == 0x05:
            code.append((op, 0, 0, rel(k, i)))
        else:
            code.append((op, rel(jt, i), rel(jf, i), k))
    return ",".join([str(len(code))] + [f"{op} {jt} {jf} {k}" for op, jt, jf, k in code])


def tc(*args: str) -> None:
    subprocess.run(["tc", *args], check=True, capture_output=True, text=True, timeout=10)


def shape(ports: list[int], share: float) -> None:
    tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10")
    tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit", "quantum", "60000")
    tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb", "rate", "8bit", "quantum", "1500")
    tc("qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo", "limit", "0")
    tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "bpf", "bytecode",
       loss_program(ports, share), "classid", "1:20")


def dropped() -> str:
    return subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True,
                          timeout=10).stdout


def unshape() -> None:
    subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], capture_output=True, timeout=10)


async def open_page(browser: Chromium, url: str) -> Tab:
    tab = await browser.new_tab("about:blank")
    await tab.call("Page.enable")
    await tab.call("Page.addScriptToEvaluateOnNewDocument", source=HOOK)
    await tab.call("Page.navigate", url=url)
    assert await tab.wait_for("typeof window.meetingState === 'object' && document.readyState === 'complete'",
                              timeout=10), tab.console
    return tab


def own_diagnostics(sfu, participant_id: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"{sfu.url}/api/participants/{participant_id}/diagnostics",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def quality(tab: Tab) -> dict:
    return await tab.evaluate(
        "({...window.meetingState.quality, shown: document.getElementById('quality').textContent,"
        " hidden: document.getElementById('quality').hidden})")


async def test_indicator_changes_on_the_shaped_page_only(dev_sfu, chromium):  # noqa: F811
    tokens = {name: dev_sfu.token("quality", identity=f"{name.lower()}@example.com", name=name)
              for name in ("Alice", "Bob")}

    def url(name):
        return f"{dev_sfu.url}/?autojoin=1&room=quality&name={name}&token={tokens[name]}"

    alice = await open_page(chromium, url("Alice"))
    assert await alice.wait_for("window.meetingState.joined || window.meetingState.error", 15), \
        await diagnose(alice, dev_sfu)
    bob = await open_page(chromium, url("Bob"))
    for tab, other in ((alice, "Bob"), (bob, "Alice")):
        stats = await wait_media(tab, [other], MEDIA_TIMEOUT)
        by_name = {p["name"]: p for p in stats["participants"].values()}
        assert other in by_name and by_name[other]["video"] > 30, await diagnose(tab, dev_sfu)
    # both links clean: both indicators say good
    for tab in (alice, bob):
        assert await tab.wait_for("window.meetingState.quality.level === 'good'", 20), \
            (await quality(tab), await diagnose(tab, dev_sfu))
        shown = await quality(tab)
        assert shown["hidden"] is False and shown["shown"] == "Connection: good", shown

    bob_port = await bob.evaluate(LOCAL_PORT)
    alice_port = await alice.evaluate(LOCAL_PORT)
    assert isinstance(bob_port, int) and bob_port != alice_port and bob_port != dev_sfu.rtc_port, \
        (bob_port, alice_port)
    shape([bob_port], LOSS)
    try:
        alice_levels: list[str] = []
        deadline = time.monotonic() + QUALITY_TIMEOUT
        bob_q = await quality(bob)
        while time.monotonic() < deadline:
            bob_q = await quality(bob)
            alice_levels.append((await quality(alice))["level"])
            if bob_q["level"] == "poor":
                break
            await asyncio.sleep(0.5)
        assert bob_q["level"] == "poor", (bob_q, dropped(), await diagnose(bob, dev_sfu))
        assert "loses" in bob_q["reason"] and "% of packets" in bob_q["reason"], bob_q
        assert bob_q["shown"].startswith("Connection: poor") and bob_q["reason"] in bob_q["shown"], bob_q
        # his own diagnostics over the API, with his token; Alice's token may not read them
        bob_id = await bob.evaluate("window.meetingState.participantId")
        status, body = own_diagnostics(dev_sfu, bob_id, tokens["Bob"])
        assert status == 200 and body["participant_id"] == bob_id, body
        assert body["uplink"]["loss_percent"] >= 10, body
        assert "127.0.0.1" not in json.dumps(body) and "bob@example.com" not in json.dumps(body), body
        assert own_diagnostics(dev_sfu, bob_id, tokens["Alice"])[0] == 403
        # Alice's link is clean: her indicator stayed good all along (Bob's loss on the tracks
        # she receives from him is his uplink's, not her downlink's)
        for _ in range(12):  # a few more gradings with the loss on
            alice_levels.append((await quality(alice))["level"])
            await asyncio.sleep(0.5)
        assert set(alice_levels) == {"good"}, (alice_levels, await quality(alice))
        assert " dropped 0," not in dropped().split("qdisc pfifo 20:")[1], dropped()
    finally:
        unshape()
    # the loss is gone: Bob's indicator comes back (better only after several clean intervals)
    assert await bob.wait_for("window.meetingState.quality.level === 'good'", QUALITY_TIMEOUT), \
        await quality(bob)
    # nothing of an address in what the page was told
    assert "127.0.0.1" not in (await quality(bob))["shown"]
    assert not [line for line in bob.console + alice.console if line.startswith("exception")], bob.console
