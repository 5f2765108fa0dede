"""The allowed range of every numeric setting, checked when the settings are built.

Each settings class names a Range for each of its int and float fields (a test checks that none
is left out); `check_ranges` refuses any value outside it, and any non-finite float, with a
message naming the key and the range. The maxima are sanity bounds: far beyond any run this
pipeline is made for, well short of what would exhaust a machine (an input_size of 100,000 was
killed by the kernel) or overflow a counter.
"""
import math
from dataclasses import dataclass, fields

from dcpipe.errors import SettingsError


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    low_open: bool = False  # the value must be above `low`, not equal to it (lr, temperature)

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}]"


def above(low: float, high: float) -> Range:
    return Range(low, high, low_open=True)


def numeric_fields(settings_class) -> list[str]:
    return [f.name for f in fields(settings_class)
            if f.type in (int, float, "int", "float")]


def check_ranges(settings, ranges: dict[str, Range]) -> None:
    for name in numeric_fields(type(settings)):
        value = getattr(settings, name)
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingsError(f"{name} must be a finite number in {ranges[name]}, got {value}")
        if value not in ranges[name]:
            raise SettingsError(f"{name} must be in {ranges[name]}, got {value}")
