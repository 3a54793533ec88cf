"""Room decisions: which consumer receives which producer (no sockets)."""

from types import SimpleNamespace

import pytest

from sfu import rtp
from sfu.router import Consumer, Producer, Room
from sfu.sdp import Codec


def vp8(pt=96):
    return Codec(payload_type=pt, name="VP8", clock_rate=90000, channels=None, fmtp={}, rtcp_fb=["nack", "nack pli"])


def transport(name):
    return SimpleNamespace(id=name, cname=name, consumers=[], rtcp_ssrc=1)


def producer(t, ssrc):
    p = Producer(t, "video", "0", vp8(), ssrc, {}, rtp)
    return p


def consumer(t, mid, pt=100):
    c = Consumer(t, "video", mid, vp8(pt), {}, rtp)
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
    room = Room("r")
    pa, pb = producer(transport("a"), 1), producer(transport("b"), 2)
    room.add_producer(pa, lambda c: None)
    room.add_producer(pb, lambda c: None)
    c = consumer(transport("v"), "0")
    room.add_consumer(c, lambda c: None)
    assert c.producer is pb
    room.remove_producer(pb, lambda c: None)
    assert c.producer is pa and pa.consumers == (c,)
    assert not c.synced  # numbering continues from where it left off at the next packet


def test_publisher_does_not_receive_itself():
    room = Room("r")
    t = transport("self")
    room.add_producer(producer(t, 1), lambda c: None)
    c = consumer(t, "1")
    room.add_consumer(c, lambda c: None)
    assert c.producer is None


@pytest.mark.parametrize("last_seq,in_seq", [(None, 100), (65535, 7), (10, 65000)])
def test_consumer_numbering_is_continuous_across_sources(last_seq, in_seq):
    c = consumer(transport("v"), "0")
    c.last_out_seq, c.last_out_ts, c.last_out_time = last_seq, 1000, 0.0
    if last_seq is None:
        c.last_out_ts = None
    c.sync(in_seq, 5000, now=0.5)
    out = (in_seq + c.rewriter.seq_delta) & 0xFFFF
    if last_seq is not None:
        assert out == (last_seq + 1) & 0xFFFF
        assert (5000 + c.rewriter.ts_delta) & 0xFFFFFFFF == 1000 + 45000  # 0.5 s at 90 kHz later
