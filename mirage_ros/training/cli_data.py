"""`mirage data`: see ``training.cli``."""
from .cli import add_data_arguments as add_arguments
from .cli import run_data as run

__all__ = ["add_arguments", "run"]
