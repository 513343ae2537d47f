"""movierec: an open MLOps system for personalized movie recommendation."""

__version__ = "0.1.0"
