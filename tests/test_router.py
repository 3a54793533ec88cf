"""The router: which consumer receives which producer (no sockets), the commands it
gives the forwarding plane, and that it alone keeps membership (one room model,
indexes by session, mid and SSRC, read-only to everyone else)."""

from types import MappingProxyType

import pytest

from sfu.router import Consumer, Producer, Router
from sfu.rtp import CODEC_OTHER, CODEC_VP8
from sfu.sdp import Codec


class RecordingPlane:
    """The commands a forwarding plane is given (sfu.plane), recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args, *kwargs.values()))


class FakeTransport:
    """What the router reads of a transport (sfu.transport.Transport)."""

    def __init__(self, name: str, plane_id: int = 0, room: str = "r") -> None:
        self.id = self.cname = name
        self.room_name = room
        self.plane_id = plane_id
        self.rtcp_ssrc = 1
        self.tracks = None
        self.forgotten: list[tuple[int, bool]] = []

    @property
    def consumers(self):
        return self.tracks.consumers

    def forget_ssrc(self, ssrc: int, inbound: bool) -> None:
        self.forgotten.append((ssrc, inbound))


def vp8(pt=96, rtx=None):
    return Codec(payload_type=pt, name="VP8", clock_rate=90000, channels=None, fmtp={},
                 rtcp_fb=["nack", "nack pli"], rtx_payload_type=rtx)


def session(router, name, plane_id=0, room="r"):
    t = FakeTransport(name, plane_id, room)
    router.open_session(t)
    return t


def publish(router, t, ssrc, plane_id=0, mid="0"):
    p = Producer(t, "video", mid, vp8(), ssrc, {}, plane_id)
    router.add_tracks(t, [p], [], [])
    return p


def consume(router, t, mid, pt=100, plane_id=0, explicit_target=False, rtx=None):
    c = Consumer(t, "video", mid, vp8(pt, rtx), {}, plane_id)
    if explicit_target is not False:
        c.explicit = True
        router.add_tracks(t, [], [c], [(c, explicit_target)])
    else:
        router.add_tracks(t, [], [c], [])
    return c


def test_two_video_sections_get_two_different_tracks():
    router = Router(RecordingPlane())
    a, b, viewer = session(router, "a"), session(router, "b"), session(router, "v")
    pa, pb = publish(router, a, 1), publish(router, b, 2)
    c1, c2 = consume(router, viewer, "0"), consume(router, viewer, "1")
    assert c1.producer is pb  # the newest first
    assert c2.producer is pa
    assert router.subscribers(pa) == (c2,) and router.subscribers(pb) == (c1,)


def test_waiting_consumers_attach_to_distinct_new_tracks():
    attached = []
    router = Router(RecordingPlane(), attached.append)
    viewer = session(router, "v")
    c1, c2 = consume(router, viewer, "0"), consume(router, viewer, "1")
    pa = publish(router, session(router, "a"), 1)
    assert attached == [c1] and c2.producer is None
    pb = publish(router, session(router, "b"), 2)
    assert attached == [c1, c2] and c2.producer is pb and c1.producer is pa


def test_removed_producer_hands_consumers_to_the_next_track():
    plane = RecordingPlane()
    router = Router(plane)
    a, b = session(router, "a", 11), session(router, "b", 12)
    pa, pb = publish(router, a, 1, plane_id=1), publish(router, b, 2, plane_id=2)
    c = consume(router, session(router, "v", 13), "0", plane_id=3)
    assert c.producer is pb
    plane.calls.clear()
    router.remove_producer(pb)
    assert c.producer is pa and router.subscribers(pa) == (c,)
    # the plane's subscription moved to pa's stream (numbering continues there, gated
    # until a keyframe), and pb's stream went; the transport's RTCP session forgot its SSRC
    assert plane.calls == [("bind", 3, None, {}, {}, CODEC_OTHER, -1), ("bind", 3, 1, {96: 100}, {}, CODEC_VP8, -1),
                           ("remove_stream", 2)]
    assert b.forgotten == [(2, True)] and b.tracks.producers == () and dict(b.tracks.producers_by_ssrc) == {}


def test_publisher_does_not_receive_itself():
    router = Router(RecordingPlane())
    t = session(router, "self")
    publish(router, t, 1, mid="0")
    c = consume(router, t, "1")
    assert c.producer is None


def test_a_producer_learnt_later_binds_its_consumers_and_pauses_reach_the_plane():
    plane = RecordingPlane()
    router = Router(plane)
    a = session(router, "a", 11)
    p = publish(router, a, None, plane_id=1)  # no SSRC yet: no stream
    c = consume(router, session(router, "v", 12), "0", plane_id=2)
    assert c.producer is p and ("bind", 2, None, {}, {}, CODEC_OTHER, -1) in plane.calls
    plane.calls.clear()
    assert router.learn_ssrc("a", 1234, b"") is p  # the only producer, no MID extension
    assert plane.calls[0][:4] == ("add_stream", 1, 11, 1234)
    assert plane.calls[1] == ("bind", 2, 1, {96: 100}, {}, CODEC_VP8, -1)
    assert a.tracks.producers_by_ssrc[1234] is p and router.stream(1) is p
    plane.calls.clear()
    router.pause_producer(p, True)
    router.hold("v", True)  # already paused: no command
    router.hold("v", False)
    router.pause_producer(p, False)
    assert plane.calls == [("set_paused", 2, True), ("set_paused", 2, False)]


def test_explicit_binds_and_a_renegotiated_codec_carry_the_rtx_payload_type():
    plane = RecordingPlane()
    router = Router(plane)
    pa = publish(router, session(router, "a", 11), 1, plane_id=1)
    pb = publish(router, session(router, "b", 12), 2, plane_id=2)
    v = session(router, "v", 13)
    c = consume(router, v, "0", plane_id=3, explicit_target=pa, rtx=101)
    assert c.producer is pa and ("bind", 3, 1, {96: 100}, {}, CODEC_VP8, 101) in plane.calls
    plane.calls.clear()
    router.rebind(c, vp8(102, rtx=103), pb)  # another codec (payload type) and another producer
    assert c.producer is pb and c.codec.payload_type == 102
    assert plane.calls[-1] == ("bind", 3, 2, {96: 102}, {}, CODEC_VP8, 103)
    assert not router.bind(c, router.producer("v:0"))  # no such producer: unbound
    assert c.producer is None and router.subscribers(pb) == ()


def test_membership_is_read_only_outside_the_router_and_rooms_come_and_go_with_tracks():
    router = Router(RecordingPlane())
    a = session(router, "a", room="r1")
    assert router.rooms == {}  # no track yet: no room
    p = publish(router, a, 5)
    assert list(router.rooms) == ["r1"] and router.producer("a:0") is p and router.producer("a:0", "r2") is None
    assert isinstance(router.rooms, MappingProxyType) and isinstance(a.tracks.producers_by_mid, MappingProxyType)
    with pytest.raises(TypeError):
        a.tracks.producers_by_mid["1"] = p
    assert router.total_tracks == 1 and router.track_count("r1") == 1
    assert router.close_session(a) == [p]
    assert router.rooms == {} and router.total_tracks == 0 and router.tracks("a") is None


def test_a_new_consumer_is_held_until_confirmed_then_asks_for_a_keyframe():
    plane = RecordingPlane()
    attached = []
    router = Router(plane, attached.append)
    pa = publish(router, session(router, "a", 11), 1, plane_id=1)
    v = session(router, "v", 13)
    c = Consumer(v, "video", "0", vp8(100, 101), {}, 3)
    c.explicit = True
    c.confirmed = False
    plane.calls.clear()
    router.add_tracks(v, [], [c], [(c, pa)])
    assert c.paused and ("set_paused", 3, True) in plane.calls
    assert v.tracks.reported(c.rtx_ssrc) is c and v.tracks.reported(c.ssrc) is c
    attached.clear()
    assert router.confirm(c) and not router.confirm(c)
    assert not c.paused and plane.calls[-1] == ("set_paused", 3, False) and attached == [c]
