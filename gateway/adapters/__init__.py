"""LoRA adapters: the registry of adapter folders, their manifests, serving them through vLLM
(lazy, idempotent, least recently used within ``--max-loras``) and training new ones with peft."""
