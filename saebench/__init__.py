"""saebench: the CLI and the evaluation suite."""

__version__ = "0.1.0"
