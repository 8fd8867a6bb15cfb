"""Checkpoint I/O: weight files (strict or lenient), the published Freeze-Omni layout, and where
the embedded default model lives.
"""
