"""Engines: what runs a model. vLLM over HTTP (``vllm``), the vLLM child process it may launch
(``supervisor``), hosted models through LiteLLM (``hosted``); a ``Target`` is one model call on a
base model or an adapter; ``factory`` builds engines from the config; ``packaged`` prepares the
models shipped in packages."""
