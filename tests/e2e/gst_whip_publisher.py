"""A GStreamer webrtcbin WHIP publisher (RFC 9725), for tests/e2e/test_gstreamer.py.

Run with the SYSTEM python3 (Debian python3-gi, gir1.2-gst-plugins-bad-1.0,
gstreamer1.0-plugins-{base,good,bad}, gstreamer1.0-nice), inside a loopback-only
network namespace:

    /usr/bin/python3 tests/e2e/gst_whip_publisher.py http://127.0.0.1:8080/whip/room --duration 20

It publishes videotestsrc as VP8 and audiotestsrc as Opus from one webrtcbin
(bundle-policy max-bundle, no STUN/TURN server), POSTs the complete offer (after
ICE gathering), applies the 201 answer, keeps sending for --duration seconds after
the connection is up, then DELETEs the WHIP resource and exits 0. SIGTERM/SIGINT
end it early the same way (DELETE, exit 0 if it had connected).

Progress goes to stdout as one line per event ("gathered", "posted 201 <location>",
"ice-connection-state connected", "connection-state connected", "deleted 200", ...)
so the test can tell where a failure happened; errors go to stderr. Exit codes:
0 done, 1 error (WHIP refused, pipeline error, connection failed), 2 not connected
within --connect-timeout.

libnice never gathers loopback addresses on its own (nice_interfaces_get_local_ips
skips them), so in a loopback-only namespace it produces no candidate and gathering
never completes. Adding 127.0.0.1 with GstWebRTCICE's "add-local-ip-address" signal
makes libnice gather exactly one host candidate on loopback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = (
    "webrtcbin name=webrtc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 ! "
    "videoconvert ! vp8enc deadline=1 ! rtpvp8pay ! "
    "application/x-rtp,media=video,encoding-name=VP8,payload=96 ! webrtc. "
    "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc ! rtpopuspay ! "
    "application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! webrtc."
)


def say(*words: object) -> None:
    print(*words, flush=True)


class WhipPublisher:
    def __init__(self, url: str, duration: float, connect_timeout: float, local_ip: str) -> None:
        self.url, self.duration, self.connect_timeout = url, duration, connect_timeout
        self.token: str | None = None  # access token sent as Authorization: Bearer
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.parse_launch(PIPELINE)
        self.webrtc = self.pipeline.get_by_name("webrtc")
        self.location: str | None = None
        self.connected = False
        self.exit_code = 0
        self.posted = False
        # webrtcbin keeps its GstWebRTCNice floating; PyGObject's wrapper sinks that
        # reference and drops it when collected, freeing the agent under webrtcbin.
        # Keep the wrapper for the life of the process and give webrtcbin its own ref.
        self.ice = self.webrtc.get_property("ice-agent")
        self.ice.ref()
        if not self.ice.emit("add-local-ip-address", local_ip):
            raise SystemExit(f"webrtcbin's ICE agent refused local address {local_ip}")
        self.webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        self.webrtc.connect("notify::ice-gathering-state", self._on_gathering_state)
        self.webrtc.connect("notify::ice-connection-state", self._on_state, "ice-connection-state")
        self.webrtc.connect("notify::connection-state", self._on_state, "connection-state")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self._on_error)

    # --- negotiation: runs on webrtcbin's threads, hands over to the main loop ---

    def _on_negotiation_needed(self, element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer_created, element)
        element.emit("create-offer", None, promise)

    def _on_offer_created(self, promise, element) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            GLib.idle_add(self._fail, f"create-offer failed: {reply}")
            return
        element.emit("set-local-description", offer, Gst.Promise.new())

    def _on_gathering_state(self, element, _pspec) -> None:
        state = element.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._post_offer)

    def _on_state(self, element, _pspec, name: str) -> None:
        value = element.get_property(name)
        GLib.idle_add(self._state_changed, name, value.value_nick)

    # --- main loop ---

    def _post_offer(self) -> bool:
        if self.posted:
            return False
        self.posted = True
        offer = self.webrtc.get_property("local-description").sdp.as_text()
        say("gathered", offer.count("a=candidate:"), "candidates")
        request = urllib.request.Request(
            self.url, data=offer.encode(), method="POST",
            headers={"Content-Type": "application/sdp",
                     **({"Authorization": f"Bearer {self.token}"} if self.token else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer = response.status, response.read().decode()
                location = response.headers.get("Location")
        except urllib.error.HTTPError as e:
            return self._fail(f"WHIP POST refused: {e.code} {e.read().decode(errors='replace')}")
        except OSError as e:
            return self._fail(f"WHIP POST failed: {e}")
        if status != 201 or not location:
            return self._fail(f"WHIP POST answered {status} (Location {location!r}): {answer}")
        self.location = urllib.parse.urljoin(self.url, location)
        say("posted", status, self.location)
        result, message = GstSdp.SDPMessage.new_from_text(answer)
        if result != GstSdp.SDPResult.OK:
            return self._fail(f"unparsable answer: {answer!r}")
        description = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        promise = Gst.Promise.new()
        self.webrtc.emit("set-remote-description", description, promise)
        promise.wait()
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            return self._fail(f"set-remote-description: {reply.get_value('error')}")
        say("answer applied")
        return False

    def _state_changed(self, name: str, nick: str) -> bool:
        say(name, nick)
        if name == "connection-state" and nick == "connected" and not self.connected:
            self.connected = True
            GLib.timeout_add(int(self.duration * 1000), self._finish)
        elif name == "connection-state" and nick == "failed":
            self._fail("connection failed")
        return False

    def _connect_timeout(self) -> bool:
        if not self.connected and self.loop.is_running():
            say("not connected after", self.connect_timeout, "s")
            self.exit_code = 2
            self.loop.quit()
        return False

    def _on_error(self, _bus, message) -> None:
        error, debug = message.parse_error()
        self._fail(f"pipeline error: {error.message} ({debug})")

    def _fail(self, why: str) -> bool:
        print(why, file=sys.stderr, flush=True)
        self.exit_code = 1
        self.loop.quit()
        return False

    def _finish(self) -> bool:
        say("done")
        self.loop.quit()
        return False

    def _on_signal(self) -> bool:
        say("signalled")
        if not self.connected:
            self.exit_code = 2
        self.loop.quit()
        return False

    def run(self) -> int:
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, self._on_signal)
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, self._on_signal)
        GLib.timeout_add(int(self.connect_timeout * 1000), self._connect_timeout)
        self.pipeline.set_state(Gst.State.PLAYING)
        try:
            self.loop.run()
        finally:
            self._delete()
            self.pipeline.set_state(Gst.State.NULL)
        return self.exit_code

    def _delete(self) -> None:
        """End the WHIP session (RFC 9725 section 4.2): DELETE the resource URL."""
        if self.location is None:
            return
        request = urllib.request.Request(  # the session's own token ends it
            self.location, method="DELETE",
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                say("deleted", response.status)
        except urllib.error.HTTPError as e:
            say("deleted", e.code)
        except OSError as e:
            print(f"DELETE failed: {e}", file=sys.stderr, flush=True)
            self.exit_code = self.exit_code or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8080/whip/room")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="seconds to keep publishing once connected")
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    parser.add_argument("--local-ip", default="127.0.0.1",
                        help="the one address libnice gathers a host candidate on")
    parser.add_argument("--token", help="access token for the WHIP endpoint (sfu token ... --publish)")
    args = parser.parse_args(argv)
    Gst.init(None)
    publisher = WhipPublisher(args.url, args.duration, args.connect_timeout, args.local_ip)
    publisher.token = args.token
    return publisher.run()


if __name__ == "__main__":
    sys.exit(main())
