"""Bulk writes, now `metering.db.writes` (kept importable under this name)."""

from metering.db.writes import OnConflict, frame_rows, write_frame, write_rows

__all__ = ["OnConflict", "frame_rows", "write_frame", "write_rows"]
