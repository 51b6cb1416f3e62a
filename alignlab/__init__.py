"""alignlab: align language models to human preferences (DPO family, T-REG, RLHF, decoding-time alignment)."""

__version__ = "0.1.0"
