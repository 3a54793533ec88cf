"""Room decisions: which consumer receives which producer (no sockets), and the
commands they give the forwarding plane."""

from types import SimpleNamespace

from sfu.router import Consumer, Producer, Room
from sfu.rtp import CODEC_OTHER, CODEC_VP8
from sfu.sdp import Codec


class RecordingPlane:
    """The commands a forwarding plane is given (sfu.plane), recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, *args))


def vp8(pt=96):
    return Codec(payload_type=pt, name="VP8", clock_rate=90000, channels=None, fmtp={}, rtcp_fb=["nack", "nack pli"])


def transport(name):
    return SimpleNamespace(id=name, cname=name, consumers=[], rtcp_ssrc=1, plane_id=0)


def producer(t, ssrc, plane_id=0):
    return Producer(t, "video", "0", vp8(), ssrc, {}, plane_id)


def consumer(t, mid, pt=100, plane_id=0):
    c = Consumer(t, "video", mid, vp8(pt), {}, plane_id)
    t.consumers.append(c)
    return c


def test_two_video_sections_get_two_different_tracks():
    room = Room("r")
    a, b, viewer = transport("a"), transport("b"), transport("v")
    pa, pb = producer(a, 1), producer(b, 2)
    room.add_producer(pa, lambda c: None)
    room.add_producer(pb, lambda c: None)
    c1, c2 = consumer(viewer, "0"), consumer(viewer, "1")
    room.add_consumer(c1, lambda c: None)
    room.add_consumer(c2, lambda c: None)
    assert c1.producer is pb  # the newest first
    assert c2.producer is pa
    assert pa.consumers == (c2,) and pb.consumers == (c1,)


def test_waiting_consumers_attach_to_distinct_new_tracks():
    room = Room("r")
    viewer = transport("v")
    c1, c2 = consumer(viewer, "0"), consumer(viewer, "1")
    room.add_consumer(c1, lambda c: None)
    room.add_consumer(c2, lambda c: None)
    attached = []
    pa = producer(transport("a"), 1)
    room.add_producer(pa, attached.append)
    assert attached == [c1] and c2.producer is None
    pb = producer(transport("b"), 2)
    room.add_producer(pb, attached.append)
    assert attached == [c1, c2] and c2.producer is pb


def test_removed_producer_hands_consumers_to_the_next_track():
    plane = RecordingPlane()
    room = Room("r")
    pa, pb = producer(transport("a"), 1, plane_id=1), producer(transport("b"), 2, plane_id=2)
    pa.open(plane)
    pb.open(plane)
    room.add_producer(pa, lambda c: None)
    room.add_producer(pb, lambda c: None)
    c = consumer(transport("v"), "0", plane_id=3)
    c.open(plane)
    room.add_consumer(c, lambda c: None)
    assert c.producer is pb
    plane.calls.clear()
    room.remove_producer(pb, lambda c: None)
    pb.close()
    assert c.producer is pa and pa.consumers == (c,)
    # the plane's subscription moved to pa's stream (numbering continues there, gated
    # until a keyframe), and pb's stream went
    assert plane.calls == [("bind", 3, None, {}, {}, CODEC_OTHER), ("bind", 3, 1, {96: 100}, {}, CODEC_VP8),
                           ("remove_stream", 2)]


def test_publisher_does_not_receive_itself():
    room = Room("r")
    t = transport("self")
    room.add_producer(producer(t, 1), lambda c: None)
    c = consumer(t, "1")
    room.add_consumer(c, lambda c: None)
    assert c.producer is None


def test_a_producer_learnt_later_binds_its_consumers_and_pauses_reach_the_plane():
    plane = RecordingPlane()
    room = Room("r")
    p = producer(transport("a"), None, plane_id=1)
    p.open(plane)  # no SSRC yet: no stream
    room.add_producer(p, lambda c: None)
    c = consumer(transport("v"), "0", plane_id=2)
    c.open(plane)
    room.add_consumer(c, lambda c: None)
    assert c.producer is p and ("bind", 2, None, {}, {}, CODEC_OTHER) in plane.calls
    plane.calls.clear()
    p.learn_ssrc(1234)  # from the MID header extension
    assert plane.calls[0][:4] == ("add_stream", 1, 0, 1234)
    assert plane.calls[1] == ("bind", 2, 1, {96: 100}, {}, CODEC_VP8)
    plane.calls.clear()
    p.set_paused(True)
    c.held = True
    c.update_paused()  # already paused: no command
    c.held = False
    c.update_paused()
    p.set_paused(False)
    assert plane.calls == [("set_paused", 2, True), ("set_paused", 2, False)]
