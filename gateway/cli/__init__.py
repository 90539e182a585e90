"""The ``gateway`` command: serve, config, models, adapters, pipelines, exemplars, eval, report.

The CLI sits above the app: it builds it (serve, eval) or calls the domain directly; nothing in
the package imports it."""
