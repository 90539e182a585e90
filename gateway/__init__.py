"""Switchboard: an OpenAI-compatible inference gateway.

A request's way reads off the tree::

    api -> admission -> routing -> pipelines -> engines -> events

- ``api/``: HTTP only (routes, bodies, the chat hot path, streaming, error rendering).
- ``admission/``: what a request may ask for and hold (keys and scopes, limits, rate limits).
- ``routing/``: route -> variant -> attempts (assignment, dispatch, retries, shadows, targets).
- ``pipelines/``: prompt programs (parse, retrieve exemplars, render, generate, vote).
- ``engines/``: what runs a model (vLLM over HTTP and its supervisor, hosted models via LiteLLM).
- ``events/``: one row per inference and per feedback (the log, its stores, metrics).

Beside the serving path, offline work: ``experiments/`` (analysis, decisions, promotion,
reports), ``evaluation/`` (labelled data through the live code path), ``adapters/`` (registry,
manifests, serving, training). ``config/`` reads ``gateway.yaml`` (phase 1) and ``resolve``
checks what it names (phase 2); ``app`` builds it all in its lifespan into ``state``; ``cli/``
is the ``gateway`` command. Nothing below ``api/`` imports ``api/``, the app or the CLI
(tests/test_layout.py reads the imports and holds that).
"""

__version__ = "0.1.0"
