"""Adapter folders for tests, and a scripted vLLM for the LoRA runtime API at the engine seam.

The scripted vLLM keeps the state the real one keeps (which names are loaded) and answers as
vLLM 0.32 does: 400 for a second load of a name, 404 for unloading or calling an unknown one.
The integration layer runs the same paths on the real vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.fakes import completion

PEFT_CONFIG: dict[str, Any] = {
    "peft_type": "LORA",
    "r": 8,
    "lora_alpha": 16,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
}


def make_adapter(
    folder: Path,
    name: str,
    *,
    base: str = "base",
    manifest: dict[str, Any] | None = None,
    peft: dict[str, Any] | None = None,
) -> Path:
    """An adapter folder with a manifest and peft files (the weights are not real)."""
    path = folder / name
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({**PEFT_CONFIG, **(peft or {})}))
    (path / "adapter_model.safetensors").write_bytes(b"not real weights")
    data = {
        "name": name,
        "base_model": base,
        "description": f"test adapter {name}",
        "rank": 8,
        "alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "created": "2025-01-01T00:00:00Z",
        **(manifest or {}),
    }
    (path / "adapter.yaml").write_text(yaml.safe_dump(data))
    return path


class ScriptedVLLM:
    """Answers vLLM's LoRA and chat endpoints from in-memory state; records every call."""

    def __init__(self, served: str = "base-upstream") -> None:
        self.served = served
        self.loras: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        #: status to answer the next load with (e.g. 400 for an adapter vLLM rejects)
        self.fail_load: tuple[int, str] | None = None

    def forget_everything(self) -> None:
        """What a restart does to runtime-loaded adapters."""
        self.loras.clear()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body: dict[str, Any] = json.loads(request.content) if request.content else {}
        path = request.url.path
        self.calls.append((path, body))
        if path == "/v1/models":
            ids = [self.served, *self.loras]
            return httpx.Response(200, json={"object": "list", "data": [{"id": i} for i in ids]})
        if path == "/v1/load_lora_adapter":
            if self.fail_load is not None:
                status, message = self.fail_load
                return _error(status, message)
            name = body["lora_name"]
            if name in self.loras:
                return _error(400, f"The lora adapter '{name}' has already been loaded.")
            self.loras[name] = body["lora_path"]
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            name = body["lora_name"]
            if name not in self.loras:
                return _error(404, f"The lora adapter '{name}' cannot be found.")
            del self.loras[name]
            return httpx.Response(200, text="Success")
        if path == "/v1/chat/completions":
            model = body["model"]
            if model != self.served and model not in self.loras:
                return _error(404, f"The model `{model}` does not exist.")
            return httpx.Response(200, json=completion(f"from {model}", model))
        return _error(404, "Not Found")

    def paths(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.calls if p == path]


def _error(status: int, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "Error", "param": None, "code": status}}
    )
