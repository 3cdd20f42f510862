"""Node types: the registry, the typing of the classic node API and the loaders of third-party nodes."""
