"""The virtual anchor.

- ``anchor.core``: the runtime (frames, media clock, channels, graph and stages, pacing, sessions,
  metrics, settings). Light to import: the network edges (``streams``) depend on it, never the
  other way, and importing ``anchor.core.frames`` loads no ML library.
- ``anchor.speech``, ``anchor.face``, ``anchor.listen``, ``anchor.responders``, ``anchor.news``: the stages.
- ``anchor.app``: the application (the ``anchor`` command, the live anchor, MQTT commands, demos).
- ``anchor.testing``: fakes with fault knobs and quality measures, for tests and benchmarks.
- ``anchor.bench`` and ``anchor.train``: tools, with their own extras (``virtual-anchor[bench,train]``).
"""
