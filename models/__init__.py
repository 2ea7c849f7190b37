"""The ML and state core: user state, text encoder, item index, the recommender pipeline.

Imports `streamrec.stream` only; no Faust, no Kafka.
"""
