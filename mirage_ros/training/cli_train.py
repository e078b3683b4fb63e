"""`mirage train`: see ``training.cli``."""
from .cli import add_train_arguments as add_arguments
from .cli import run_train as run

__all__ = ["add_arguments", "run"]
