"""The bus contract and plumbing: settings, message schemas, topics, producer SDK, dev broker.

Imports nothing else of streamrec's.
"""
