"""saebench: the CLI, the evaluation suite and a small Python API (saebench.api).

The API names are exported lazily, so `import saebench` loads neither torch nor DuckDB.
"""

__version__ = "0.1.0"

_API = ("open_workspace", "load_model", "load_sae", "Workspace", "SAEHandle")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from saebench import api

        return getattr(api, name)
    raise AttributeError(f"module 'saebench' has no attribute {name!r}")
