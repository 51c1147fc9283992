"""How messages travel between actors: the coalescing outbox and the store of offloaded texts."""
