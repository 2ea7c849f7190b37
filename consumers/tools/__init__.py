"""Tools beside the worker: benchmarks, soak, load rig, demo feed and reports. Never imported by the worker."""
