"""Image features, encoded once and cached: `decode` (image loading workers), `cache` (the
content-keyed shard cache), `store` (what the rest of the package reads), `extract` (filling the
cache, one path for a single process and for every torchrun rank), `distributed` (torchrun)."""
