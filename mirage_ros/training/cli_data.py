"""`mirage data`: see ``training.cli``."""
from .cli import add_data_arguments as add_arguments, run_data as run  # noqa: F401
