"""harness: reproduce and extend the pre-training ablations of RoBERTa."""

__version__ = "0.1.0"
