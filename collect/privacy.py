"""No call-home: switch off Hugging Face telemetry and Gradio analytics unless the user chose otherwise."""

import os


def disable_telemetry() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DO_NOT_TRACK", "1")
