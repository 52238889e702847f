"""A small LoRA adapter for the default model, and its answers computed outside vLLM.

The adapter is a deterministic low-rank delta (seeded Gaussian factors, PEFT's format) on
the attention and MLP projections of every layer of SmolLM2-135M; the reference merges it
into the weights (W + alpha/r * B @ A) with transformers in float32 and decodes greedily,
which is what vLLM's LoRA kernels compute unmerged, in the engine's dtype.

    python -m tests.lora_adapter MODEL_DIR [ADAPTER_DIR|-] PROMPT MAX_TOKENS

prints the reference completion as JSON (``text``, per-token ``logprobs``, and ``margins``:
the gap between each chosen token's log-probability and the runner-up's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

RANK, ALPHA, SIGMA, SEED = 8, 16, 0.05, 1234
TARGETS = {"q_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn", "down_proj": "mlp"}


def make_adapter(model_dir: Path, out_dir: Path) -> Path:
    """Write the adapter (adapter_config.json, adapter_model.safetensors) into ``out_dir``."""
    from safetensors.numpy import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"] * config["head_dim"]
    kv_heads = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"q_proj": (hidden, heads), "v_proj": (hidden, kv_heads), "o_proj": (heads, hidden),
              "down_proj": (config["intermediate_size"], hidden)}  # (in, out)
    rng = np.random.default_rng(SEED)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, block in TARGETS.items():
            fan_in, fan_out = shapes[name]
            key = f"base_model.model.model.layers.{layer}.{block}.{name}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, fan_in ** -0.5, (RANK, fan_in)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, SIGMA, (fan_out, RANK)).astype(np.float32)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    (out_dir / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
        "target_modules": sorted(TARGETS), "bias": "none", "lora_dropout": 0.0, "fan_in_fan_out": False,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "base_model_name_or_path": "smollm2"}))
    return out_dir


def reference(model_dir: Path, adapter_dir: Path | None, prompt: str, max_tokens: int) -> dict:
    """Greedy completion of ``prompt`` by transformers, with the adapter merged (or without)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        factors = load_file(adapter_dir / "adapter_model.safetensors")
        weights = dict(model.named_parameters())
        with torch.no_grad():
            for key, a in factors.items():
                if key.endswith(".lora_A.weight"):
                    name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
                    weights[name] += scale * (factors[key.replace("lora_A", "lora_B")] @ a)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
        logprobs = model(out).logits[0, ids.shape[1] - 1:-1].float().log_softmax(-1)
    tokens = out[0, ids.shape[1]:]
    top2 = logprobs.topk(2, -1).values
    return {"text": tokenizer.decode(tokens), "logprobs": logprobs.gather(1, tokens[:, None])[:, 0].tolist(),
            "margins": (top2[:, 0] - top2[:, 1]).tolist()}


if __name__ == "__main__":
    model, adapter, prompt, max_tokens = sys.argv[1:5]
    print(json.dumps(reference(Path(model), None if adapter == "-" else Path(adapter), prompt, int(max_tokens))))
