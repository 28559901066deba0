"""The HTTP side of `ggnet serve`: PCs' boot requests, health, and (under /api/v1) the API."""
