"""Files and tensors on disk: readers, writers, memory-mapped pages, outputs written whole."""
