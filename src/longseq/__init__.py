"""longseq: research methods for long-sequence generative models."""

__version__ = "0.1.0"
