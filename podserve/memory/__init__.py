"""Physical KV memory: the paged pool, and the virtual pool over CUDA VMM or CPU mmap."""
