"""Instants: the range every layer can represent, and their RFC 3339 form."""

from __future__ import annotations

from datetime import UTC, datetime

# A day after the epoch: in every time zone (offsets -12:00 to +14:00) the local day is 1970 or
# later, which every month and day query accepts. Before 2262-04-11 pandas' nanosecond
# timestamps end; 2262-01-01 leaves the tenant-local months of that year representable too.
REPRESENTABLE_FROM = datetime(1970, 1, 2, tzinfo=UTC)
REPRESENTABLE_UNTIL = datetime(2262, 1, 1, tzinfo=UTC)  # exclusive


def rfc3339(moment: datetime) -> str:
    """An instant as RFC 3339 in UTC, `Z` for the offset."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
