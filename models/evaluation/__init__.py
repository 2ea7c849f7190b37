"""Evaluation: ranking metrics, leave-one-out and prequential drivers, baselines, the full-system replay."""
