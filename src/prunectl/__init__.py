"""prunectl: command-line model compression for Keras 3.

The import package maps the repository's top-level ``core/`` (the library) and
``cli/`` (the command line) folders to ``prunectl.core`` and ``prunectl.cli``.
"""

__version__ = "0.1.0"
