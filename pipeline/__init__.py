"""Everything that touches weights: layouts, regions, regional attention, sampling."""
