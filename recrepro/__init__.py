"""recrepro: an unofficial reproduction kit for AgenticRec (arXiv 2603.21613).

The package is a library without hidden state; the notebooks under ``notebooks/`` and the CLI
(``python -m recrepro``) are thin entry points into it.
"""

__version__ = "0.1.0"
