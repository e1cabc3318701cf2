"""Tokenizers: GPT-2's byte-level BPE as tiktoken, a checkpoint's vocabulary as data."""
