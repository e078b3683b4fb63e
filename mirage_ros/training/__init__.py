"""Training: datasets (``mirage data``) and the trainer (``mirage train``).

Its own room: it imports memory, sim, world_model and perception; nothing imports it but the CLI.
The trainer never renders, encodes or reads the memory -- the dataset carries all of that.
"""
