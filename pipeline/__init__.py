"""Everything that touches weights: layouts, regions, regional attention, sampling."""

__version__ = "0.1.0"  # eligen's version, recorded in every PNG it writes
