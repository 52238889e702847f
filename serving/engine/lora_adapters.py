"""Tenants' LoRA adapters on the engine of their base model: copied onto this node from the
object store if they live there, then registered with vLLM under their public ids.

vLLM serves an adapter by name: a request whose ``model`` is the adapter's id runs on the
base model with the adapter's low-rank deltas. The front door sets that name only for the
adapter's owner (``routers``, ``Admission.served_model``), so no other tenant can reach it;
and vLLM keys prefix-cache blocks by adapter as well as by the owner's cache salt, so an
adapter's cache entries are its tenant's alone.

An adapter that cannot be loaded (a missing directory, a rank over ``max_lora_rank``) is
logged and left out: the engine still serves its base model and the other adapters, and a
request for the missing one is refused by vLLM (404), never answered by the base model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

from serving.config import OBJECT_STORE_SCHEMES, fabriek_home

logger = logging.getLogger("fabriek.engine")

# experimental_configs key of the adapters an engine serves: id -> absolute path or object-store URI.
ADAPTERS_KEY = "fabriek_adapters"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's


class AdapterError(RuntimeError):
    """An adapter's directory is not a PEFT LoRA adapter (the message says what is wrong)."""


def local_adapter_dir(adapter_id: str, source: str) -> Path:
    """The adapter's directory on this node: a local source as it is; an object-store one
    copied (once per source, under a file lock) below ``$FABRIEK_HOME/adapters``."""
    if not source.startswith(OBJECT_STORE_SCHEMES):
        return Path(source)
    # Ray Serve LLM's own LoRA download (private: tests/serving/engine/test_private_hooks.py).
    from ray.llm._internal.common.utils.lora_utils import sync_files_with_lock

    destination = fabriek_home() / "adapters" / hashlib.sha256(source.encode()).hexdigest()[:16] / adapter_id
    destination.parent.mkdir(parents=True, exist_ok=True)
    sync_files_with_lock(source, str(destination))
    return destination


def check_adapter_dir(path: Path) -> None:
    """Raises ``AdapterError`` unless ``path`` holds a PEFT LoRA adapter's config."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text())
    except FileNotFoundError:
        raise AdapterError(f"{path} has no {ADAPTER_CONFIG} (a PEFT LoRA adapter's directory)") from None
    except (OSError, ValueError) as err:
        raise AdapterError(f"{path / ADAPTER_CONFIG}: {err}") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path / ADAPTER_CONFIG}: not a LoRA adapter (peft_type "
                           f"{config.get('peft_type') if isinstance(config, dict) else None!r})")


async def load_adapters(engine: Any, adapters: Mapping[str, str]) -> list[str]:
    """Register each adapter with the engine (Ray's ``VLLMEngine.resolve_lora``, which has
    vLLM load and check it); returns the ids that loaded."""
    from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig

    loaded = []
    for number, (adapter_id, source) in enumerate(sorted(adapters.items()), start=1):
        try:
            path = await asyncio.to_thread(local_adapter_dir, adapter_id, source)
            check_adapter_dir(path)
            await engine.resolve_lora(DiskMultiplexConfig(model_id=adapter_id, local_path=str(path),
                                                          max_total_tokens=None, lora_assigned_int_id=number))
        except Exception as err:  # one tenant's broken adapter never stops the engine
            logger.error("adapter %s (%s) not loaded: %s", adapter_id, source, str(err)[:500])
            continue
        loaded.append(adapter_id)
    if adapters:
        logger.info("adapters loaded: %d of %d", len(loaded), len(adapters))
    return loaded
