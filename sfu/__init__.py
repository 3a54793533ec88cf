"""A WebRTC selective forwarding unit: asyncio/uvloop control plane, Cython fast path."""

__version__ = "0.1.0"
