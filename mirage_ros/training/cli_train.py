"""`mirage train`: see ``training.cli``."""
from .cli import add_train_arguments as add_arguments, run_train as run  # noqa: F401
