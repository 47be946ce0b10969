"""Canonical check-in table: column names and Arrow types shared by readers, cleaning and the tokenizer.

Every reader returns these four columns first, in this order, with these types; any extra columns
(``venue_id``, ``altitude_ft``...) follow them unchanged. Keeping the names in one place avoids string typos
across modules.
"""

from __future__ import annotations

import pyarrow as pa

USER_ID = "user_id"
LATITUDE = "latitude"
LONGITUDE = "longitude"
TIMESTAMP = "timestamp"

# Common optional extras (not required by the pipeline).
VENUE_ID = "venue_id"

USER_ID_TYPE = pa.string()
LATITUDE_TYPE = pa.float64()
LONGITUDE_TYPE = pa.float64()
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

CHECKIN_COLUMNS: tuple[str, ...] = (USER_ID, LATITUDE, LONGITUDE, TIMESTAMP)
CHECKIN_TYPES: dict[str, pa.DataType] = {
    USER_ID: USER_ID_TYPE,
    LATITUDE: LATITUDE_TYPE,
    LONGITUDE: LONGITUDE_TYPE,
    TIMESTAMP: TIMESTAMP_TYPE,
}
CHECKIN_SCHEMA = pa.schema([pa.field(name, CHECKIN_TYPES[name]) for name in CHECKIN_COLUMNS])

__all__ = [
    "CHECKIN_COLUMNS",
    "CHECKIN_SCHEMA",
    "CHECKIN_TYPES",
    "LATITUDE",
    "LATITUDE_TYPE",
    "LONGITUDE",
    "LONGITUDE_TYPE",
    "TIMESTAMP",
    "TIMESTAMP_TYPE",
    "USER_ID",
    "USER_ID_TYPE",
    "VENUE_ID",
]
