"""Shared test helpers (fixtures stay in the `conftest.py` files).

- `workers`: the one launcher of `streamrec worker` processes (`start_worker` -> `Worker`),
  its HTTP API, and waiting for a worker to index a catalogue.
- `events`: the one event factory (`event`, `event_fields`) and the bad inputs of the contract.
- `topics`: reading topics from the outside (aiokafka and librdkafka), committed offsets.
- `metrics`: a worker's /metrics as {'name{labels}': value}, sums over series.
- `waiting`: polling until a condition holds (sync and async).
- `group_run`: a worker group with its own topics, a sender and the checks of every user.
- `checkpoints`: a trained checkpoint in a worker's model store.
- `fakes`: stand-ins for unit tests of pure logic; `fuzz_inputs`: hypothesis strategies.
"""
