"""The ``emit`` command line: argument parsing only; the work is in the library.

* :mod:`emit.cli.app` -- the parser (:func:`build_parser`) and the entry point (:func:`main`);
* :mod:`emit.cli.options` -- what every command shares: ``-v``/``-q``/``--threads``,
  ``--cache-dir``, the help formatter, :func:`~emit.cli.options.print_json`;
* :mod:`emit.cli.config_flags` -- flags generated from the config dataclasses' fields;
* one module per command group: :mod:`~emit.cli.pair` (``pair train|predict|evaluate``),
  :mod:`~emit.cli.data` (``split``, ``labels stats``, ``demo``), :mod:`~emit.cli.retrieval`
  (``retrieval train|evaluate``, ``index build``, ``search``), :mod:`~emit.cli.serve`.

Run it as ``emit ...``, ``python -m emit ...`` or ``python -m emit.cli ...``.
"""

from emit.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
