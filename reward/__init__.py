"""reward stage of prefloop"""

import collect  # noqa: F401  (switches telemetry off before any HF or Gradio import)
