"""Cython hot paths of the SFU (compiled by setup.py)."""
