"""The trainer sidecar: reads every event, fine-tunes on a window, publishes model versions."""
