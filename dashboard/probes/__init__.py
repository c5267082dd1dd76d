"""Probes: one module per family. Each installs hooks, counts on the hot path, and
builds its JSON-ready snapshot section only when ``collect()`` is called."""
