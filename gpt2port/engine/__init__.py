"""The decoding engine: KV caches, step kernels, the compiled and captured steps, token choice."""
