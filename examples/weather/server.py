"""acme/weather: an MCP agent that depends on a plugin, acme/geo, for places and distances.

The forecast is a demo: a seasonal model of temperature by latitude and day of the year, with
deterministic day-to-day variation. It needs no network and no API key, and it is not a real
weather service.
"""

import hashlib
import math
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

HERE = Path(__file__).resolve().parent


def dependency_folder(namespace: str, name: str) -> Path:
    """Where a dependency's code is: installed by mcpz under .mcpz/deps/, or else (in this
    examples folder, until dependencies are installed) the plugin's folder beside this one."""
    installed = HERE / ".mcpz" / "deps" / namespace / name
    return installed if installed.is_dir() else HERE.parent / name


sys.path.insert(0, str(dependency_folder("acme", "geo")))
import geo  # noqa: E402  (acme/geo, declared in mcpz.toml [dependencies])

mcp = MCPServer("acme/weather", version="0.1.0")


class Day(BaseModel):
    date: str
    high_c: float
    low_c: float
    conditions: str


class Forecast(BaseModel):
    city: str
    country: str
    days: list[Day]


def _place(city: str) -> geo.Place:
    try:
        return geo.locate(city)
    except LookupError as e:
        raise ToolError(str(e)) from None


def _day(place: geo.Place, when: date) -> Day:
    lat = abs(place.lat)
    mean = 28 - 0.38 * lat
    amplitude = 0.18 * lat
    peak = 200 if place.lat >= 0 else 17  # warmest day of the year, north and south
    seasonal = amplitude * math.cos(2 * math.pi * (when.timetuple().tm_yday - peak) / 365.25)
    seed = hashlib.sha256(f"{place.name}:{when.isoformat()}".encode()).digest()
    wobble = (seed[0] / 255 - 0.5) * 5
    high = round(mean + seasonal + wobble + 4, 1)
    low = round(mean + seasonal + wobble - 4, 1)
    wet = seed[1] % 3 == 0
    conditions = ("snow" if low < 0 else "rain") if wet else ("cloudy" if seed[2] % 2 else "sunny")
    return Day(date=when.isoformat(), high_c=high, low_c=low, conditions=conditions)


@mcp.tool()
def forecast(city: str, days: Annotated[int, Field(ge=1, le=7)] = 3) -> Forecast:
    """Forecast high and low temperatures (°C) and conditions for a city, starting today."""
    place = _place(city)
    today = date.today()
    return Forecast(
        city=place.name,
        country=place.country,
        days=[_day(place, today + timedelta(days=n)) for n in range(days)],
    )


@mcp.tool()
def distance(from_city: str, to_city: str) -> float:
    """Great-circle distance between two cities, in kilometres."""
    return round(geo.distance_km(_place(from_city), _place(to_city)), 1)


@mcp.tool()
def cities() -> list[str]:
    """The cities this agent knows."""
    return geo.cities()


if __name__ == "__main__":
    mcp.run()
