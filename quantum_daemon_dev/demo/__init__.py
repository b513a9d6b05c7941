"""The demo's parts (scripts/demo.py composes them): the paced bar feed, the
demo settings, the tally of what the daemon published, and its summaries."""
