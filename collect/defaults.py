"""Defaults shared by the Python API, the `prefloop` commands and the dashboards.

Standard library only: every `prefloop` command reads these for its options' defaults at start-up, and importing
the modules that use them (numpy, pandas) would slow down even `prefloop --help`.
"""

N_BOOTSTRAP = 1000
"""Bootstrap replicates for the 95% intervals of agreement and the leaderboard: the default of the Python API,
of `prefloop quality` (--n-bootstrap) and of the admin dashboard."""

HEARTBEAT_SECONDS = 30
"""How often the rater app reports that a rater is at work (moving, scrolling or typing) while an item is open. Active
time between two reports is capped at the project's idle_seconds, so a threshold below this underpays reading."""
