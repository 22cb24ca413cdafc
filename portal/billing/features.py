"""Feature types and rate windows: what a plan can grant."""
from __future__ import annotations

import enum

from portal.billing.periods import WindowUnit

#: The window of a RATE feature (minute, hour, day).
RateWindow = WindowUnit


class FeatureType(str, enum.Enum):
    BOOLEAN = "BOOLEAN"  #: on or off
    QUOTA = "QUOTA"  #: N per billing period, reset at renewal
    RATE = "RATE"  #: N per time window (minute, hour, day)
    USAGE = "USAGE"  #: always allowed, billed by consumption
