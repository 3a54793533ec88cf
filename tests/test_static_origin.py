"""The pages in sfu/static talk only to the server that served them (issue 9): a
link with ``?server=https://elsewhere`` must not send the camera, the microphone
or the token anywhere else.  Browser-free: each script runs in Node with a fake
DOM, fetch, WebSocket and RTCPeerConnection that record every URL the page
reaches for; and the session's token goes with the WHIP/WHEP DELETE."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import urllib.parse

import pytest

pytestmark = pytest.mark.timeout(60)
STATIC = pathlib.Path(__file__).parent.parent / "sfu" / "static"
ORIGIN = "http://sfu.test:8080"
EVIL = "http://evil.test:9999"
NODE = shutil.which("node") or shutil.which("nodejs")

# A fake browser: just enough of the DOM and WebRTC for the pages to start a join /
# a publish and a play; every fetch and WebSocket is recorded, nothing leaves.
HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const [file, href, stopAfterMs] = process.argv.slice(2);
const requests = [];
const handlers = {};
function element(id) {
  const own = {};
  return {
    id, value: "", hidden: false, disabled: false, textContent: "", className: "", srcObject: null,
    muted: false, style: {}, dataset: {},
    classList: { add() {}, remove() {}, toggle() {}, contains() { return false; } },
    addEventListener(type, fn) { (own[type] ||= []).push(fn); },
    removeEventListener() {}, appendChild(c) { return c; }, append() {}, remove() {}, replaceChildren() {},
    querySelector() { return null; }, querySelectorAll() { return []; }, setAttribute() {},
    play() { return Promise.resolve(); },
    requestSubmit() { for (const fn of own.submit || []) fn({ preventDefault() {} }); },
    click() { for (const fn of own.click || []) fn({ preventDefault() {} }); },
  };
}
const elements = {};
const document = {
  getElementById(id) { return elements[id] ||= element(id); },
  createElement(tag) { return element(tag); },
  querySelector() { return null; }, querySelectorAll() { return []; },
};
class FakeTrack { constructor(kind) { this.kind = kind; this.enabled = true; } stop() {} addEventListener() {} }
class MediaStream {
  constructor(tracks) { this.tracks = tracks || []; }
  getTracks() { return this.tracks; } getAudioTracks() { return this.tracks.filter((t) => t.kind === "audio"); }
  getVideoTracks() { return this.tracks.filter((t) => t.kind === "video"); } addTrack(t) { this.tracks.push(t); }
}
let mids = 0;
class RTCPeerConnection {
  constructor() { this.iceGatheringState = "complete"; this.connectionState = "new"; this.localDescription = null; }
  addTransceiver(what) {
    const kind = typeof what === "string" ? what : what.kind;
    return { mid: String(mids++), direction: "sendonly", sender: { track: null, replaceTrack: async () => {},
      getParameters: () => ({ encodings: [{}] }), setParameters: async () => {} }, receiver: { track: new FakeTrack(kind),
      getStats: async () => new Map() }, setDirection() {}, stop() {} };
  }
  getTransceivers() { return []; }
  async createOffer() { return { type: "offer", sdp: "v=0\r\n" }; }
  async setLocalDescription(d) { this.localDescription = d || { type: "offer", sdp: "v=0\r\n" }; }
  async setRemoteDescription() {}
  addEventListener() {} removeEventListener() {} close() {}
  async getStats() { return new Map(); }
}
async function fetch(url, init) {
  init = init || {};
  const headers = init.headers || {};
  requests.push({ kind: "fetch", url: String(url), method: init.method || "GET",
                  authorization: headers.Authorization || headers.authorization || null });
  const location = String(url).match(/\/(whip|whep)\/[^/]+$/) ? String(url) + "/sess" + requests.length : null;
  return {
    status: location ? 201 : 200,
    headers: { get: (name) => (name.toLowerCase() === "location" ? location : null) },
    text: async () => "v=0\r\n",
    json: async () => ({ token: "dev-token" }),
  };
}
class WebSocket {
  constructor(url) { requests.push({ kind: "websocket", url: String(url) }); this.readyState = 0; }
  send() {} close() {}
}
WebSocket.OPEN = 1;
const location = new URL(href);
const sandbox = {
  document, fetch, WebSocket, RTCPeerConnection, MediaStream, URL, URLSearchParams, console,
  setTimeout, clearTimeout, setInterval: () => 0, clearInterval() {},
  navigator: { mediaDevices: { getUserMedia: async (c) => new MediaStream(
    [c.audio && new FakeTrack("audio"), c.video && new FakeTrack("video")].filter(Boolean)),
    getDisplayMedia: async () => new MediaStream([new FakeTrack("video")]) } },
  addEventListener(type, fn) { (handlers[type] ||= []).push(fn); },
};
sandbox.window = sandbox;
sandbox.window.location = location;
process.on("unhandledRejection", () => {});
vm.runInNewContext(fs.readFileSync(file, "utf8"), sandbox, { filename: file });
setTimeout(() => {
  const stop = elements.stop;  // the WHIP/WHEP page's Stop: DELETE both sessions
  if (stop) stop.click();
  setTimeout(() => { console.log(JSON.stringify(requests)); process.exit(0); }, 100);
}, Number(stopAfterMs));
"""


def run_page(script: str, query: dict, tmp_path: pathlib.Path, source: str | None = None) -> list[dict]:
    assert NODE is not None, "node is not installed: run `make test` (scripts/install-system-deps.sh installs nodejs)"
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    path = STATIC / script
    if source is not None:
        path = tmp_path / script
        path.write_text(source)
    href = f"{ORIGIN}/?{urllib.parse.urlencode(query)}"
    out = subprocess.run([NODE, str(harness), str(path), href, "300"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def same_origin(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}" == ORIGIN


@pytest.mark.parametrize("query", [
    {"server": EVIL, "room": "r1", "name": "Ann", "autojoin": "1"},  # dev token, then the socket
    {"server": EVIL, "room": "r1", "name": "Ann", "autojoin": "1", "token": "given"},
])
def test_meeting_page_ignores_a_server_parameter(query, tmp_path):
    requests = run_page("meeting.js", query, tmp_path)
    assert any(r["kind"] == "websocket" for r in requests), requests  # it did try to join
    assert all(same_origin(r["url"]) for r in requests), requests
    assert "evil" not in json.dumps(requests)


def test_whip_whep_page_ignores_a_server_parameter_and_deletes_with_its_token(tmp_path):
    requests = run_page("sfu.js", {"server": EVIL, "room": "r1", "publish": "1", "play": "1",
                                   "token": "tok-1"}, tmp_path)
    posts = [r for r in requests if r["method"] == "POST"]
    assert sorted(urllib.parse.urlsplit(r["url"]).path for r in posts) == ["/whep/r1", "/whip/r1"], requests
    assert all(same_origin(r["url"]) for r in requests), requests
    deletes = [r for r in requests if r["method"] == "DELETE"]
    assert len(deletes) == 2 and {r["authorization"] for r in deletes} == {"Bearer tok-1"}, requests


def test_the_harness_catches_a_page_that_honours_the_parameter(tmp_path):
    """The check can fail: the old line (``params.get("server") || origin``) is caught."""
    source = (STATIC / "meeting.js").read_text().replace(
        "const server = window.location.origin;",
        'const server = params.get("server") || window.location.origin;')
    assert 'params.get("server")' in source
    requests = run_page("meeting.js", {"server": EVIL, "room": "r1", "name": "Ann", "autojoin": "1"},
                        tmp_path, source=source)
    assert requests and not all(same_origin(r["url"]) for r in requests), requests
