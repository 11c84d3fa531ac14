"""acme/geo: a plugin that finds cities and measures distances between them.

A plugin is code that agents declare in `[dependencies]` and import; it has no `[run]` and is
never started on its own. The gazetteer is a small built-in table, so the plugin needs no
network and no packages beyond the standard library.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Any

__version__ = "0.1.0"

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PLACES = [
    Place("Oslo", "NO", 59.9139, 10.7522),
    Place("Bergen", "NO", 60.3913, 5.3221),
    Place("Tromsø", "NO", 69.6492, 18.9553),
    Place("Stockholm", "SE", 59.3293, 18.0686),
    Place("Copenhagen", "DK", 55.6761, 12.5683),
    Place("Helsinki", "FI", 60.1699, 24.9384),
    Place("Reykjavík", "IS", 64.1466, -21.9426),
    Place("London", "GB", 51.5072, -0.1276),
    Place("Paris", "FR", 48.8566, 2.3522),
    Place("Berlin", "DE", 52.5200, 13.4050),
    Place("Madrid", "ES", 40.4168, -3.7038),
    Place("Rome", "IT", 41.9028, 12.4964),
    Place("Cairo", "EG", 30.0444, 31.2357),
    Place("Nairobi", "KE", -1.2921, 36.8219),
    Place("Cape Town", "ZA", -33.9249, 18.4241),
    Place("New York", "US", 40.7128, -74.0060),
    Place("San Francisco", "US", 37.7749, -122.4194),
    Place("Mexico City", "MX", 19.4326, -99.1332),
    Place("São Paulo", "BR", -23.5558, -46.6396),
    Place("Tokyo", "JP", 35.6762, 139.6503),
    Place("Singapore", "SG", 1.3521, 103.8198),
    Place("Sydney", "AU", -33.8688, 151.2093),
]
_BY_KEY = {place.name.casefold(): place for place in _PLACES}


def cities() -> list[str]:
    """The names of the cities the gazetteer knows."""
    return [place.name for place in _PLACES]


def locate(city: str) -> Place:
    """Find a city by name (any case). LookupError, naming the closest match, if unknown."""
    place = _BY_KEY.get(city.strip().casefold())
    if place is None:
        close = difflib.get_close_matches(city.strip().casefold(), list(_BY_KEY), n=1)
        suggestion = f'; did you mean "{_BY_KEY[close[0]].name}"?' if close else ""
        raise LookupError(f'unknown city "{city}"{suggestion}')
    return place


def distance_km(a: Place, b: Place) -> float:
    """Great-circle distance between two places, in kilometres (haversine formula)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (a.lat, a.lon, b.lat, b.lon))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))
