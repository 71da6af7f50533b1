"""The data engine: storage, projects, raters, assignment, quality control, import and export."""

from collect.privacy import disable_telemetry

disable_telemetry()
