"""The web face: a Klein app over the monitor's snapshots (routes, JSON errors, serving)."""
