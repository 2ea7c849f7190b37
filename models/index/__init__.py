"""The item index: one protocol, the Qdrant Edge and Qdrant server backends, a cache, health tracking."""
