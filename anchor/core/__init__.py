"""The runtime core: frames, clock, channels, graph, stages, pacer, sessions, metrics, settings."""
