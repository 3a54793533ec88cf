"""Typed surface of the Cython module sfu._fast.packet (twin of sfu.rtp)."""

from collections.abc import Mapping

from sfu.rtp import Buffer

def parse_rtp_header(buf: Buffer) -> tuple[int, bool, int, int, int, int]:
    """(payload_type, marker, sequence_number, timestamp, ssrc, header_length); ValueError if malformed."""

def get_extension(buf: Buffer, ext_id: int) -> bytes | None:
    """Data of the first RFC 8285 header extension element ``ext_id``; ValueError if malformed."""

def is_keyframe(codec: int, packet: Buffer) -> bool:
    """True if the RTP ``packet`` starts a keyframe of ``codec`` (see sfu.rtp.is_keyframe)."""

def codec_id(name: str) -> int:
    """The keyframe detector's id of an SDP codec name (see sfu.rtp.codec_id)."""

class Rewriter:
    """Per-subscriber rewrite of one published stream (see sfu.rtp.Rewriter)."""

    def __init__(self, ssrc: int, pt_map: Mapping[int, int], ext_map: Mapping[int, int]) -> None: ...
    @property
    def ssrc(self) -> int: ...
    @ssrc.setter
    def ssrc(self, value: int) -> None: ...
    @property
    def seq_delta(self) -> int: ...
    @seq_delta.setter
    def seq_delta(self, value: int) -> None: ...
    @property
    def ts_delta(self) -> int: ...
    @ts_delta.setter
    def ts_delta(self, value: int) -> None: ...
    @property
    def pt_map(self) -> dict[int, int]: ...
    @property
    def ext_map(self) -> dict[int, int]: ...
    def set_pt_map(self, pt_map: Mapping[int, int]) -> None: ...
    def set_ext_map(self, ext_map: Mapping[int, int]) -> None: ...
    def rewrite(self, src: Buffer, dst: bytearray | memoryview) -> int:
        """Rewritten packet length in ``dst``, -1 if the payload type is unmapped."""
