"""Tenants' LoRA adapters in the config: what is accepted, what is refused and why, and
which engines serve them (only those of the owner's domain)."""

from __future__ import annotations

import copy

import pytest

from serving.config import ConfigError, load_config
from serving.engine.engines import engine_deployments
from serving.engine.lora_adapters import ADAPTERS_KEY
from tests.serving.config.test_schema import TENANCY

ADAPTER = {"id": "gov-demo-permits", "base": "m", "source": "/adapters/permits"}


def with_adapters(*adapters, tenant: int = 0, pools_of=None):
    config = copy.deepcopy(TENANCY)
    config["tenants"][tenant]["adapters"] = list(adapters)
    if pools_of is not None:
        config["models"].append({"id": "e5", "source": "/models/e5", "engine_args": {"runner": "pooling"}})
        config["pools"].append({"name": "gov-embed", "accelerator": "gpu", "models": ["e5"]})
        config["classes"]["government"]["pools"].append("gov-embed")
        config["tenants"][0]["models"].append("e5")
    return config


def test_an_adapter_belongs_to_its_tenant_only():
    tenancy = load_config(with_adapters(ADAPTER)).tenancy()
    assert tenancy.tenants["gov-demo"].adapters == {("gov-demo-permits", "m")}
    assert tenancy.tenants["pilot-demo"].adapters == frozenset()


@pytest.mark.parametrize(("adapter", "expected"), [
    ({**ADAPTER, "base": "other"}, "tenants[gov-demo].adapters[gov-demo-permits].base: 'other' is not one of"),
    ({**ADAPTER, "id": "m"}, "models and adapters: 'm' appears twice"),
    ({**ADAPTER, "id": "Permits!"}, "tenants[0].adapters[0].id: 'Permits!' must be lowercase"),
    ({**ADAPTER, "source": "HuggingFaceH4/some-lora"}, "fabriek never downloads from a model hub"),
    ({**ADAPTER, "source": "fabriek://smollm2-135m-instruct"}, "neither a local path nor an object-store URI"),
    ({**ADAPTER, "rank": 8}, "tenants[0].adapters[0].rank"),
])
def test_invalid_adapters_name_the_path(adapter, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(with_adapters(adapter))
    assert expected in str(raised.value)


def test_adapter_ids_are_unique_across_tenants():
    config = with_adapters(ADAPTER)
    config["tenants"][1]["adapters"] = [ADAPTER]
    with pytest.raises(ConfigError, match="'gov-demo-permits' appears twice"):
        load_config(config)


def test_an_embedding_model_takes_no_adapter():
    with pytest.raises(ConfigError, match="'e5' is an embedding model"):
        load_config(with_adapters({**ADAPTER, "base": "e5"}, pools_of="gov"))


def test_a_pool_that_turns_lora_off_is_refused():
    config = with_adapters(ADAPTER)
    config["pools"][0]["engine_args"]["enable_lora"] = False
    with pytest.raises(ConfigError, match="pool 'gov' sets `enable_lora: false`"):
        load_config(config)


def test_only_the_owners_domain_engines_load_the_adapter(tmp_path):
    config = load_config(with_adapters({**ADAPTER, "source": "./permits"},
                                       {**ADAPTER, "id": "gov-demo-bucket", "source": "s3://gov-bucket/lora"}),
                         check_library_settings=False)
    engines = {(e.pool, e.model_id): e for e in engine_deployments(config)}
    gov, biz = engines[("gov", "m")], engines[("biz", "m")]
    assert gov.engine_args["enable_lora"] is True
    adapters = gov.llm_config.experimental_configs[ADAPTERS_KEY]
    assert adapters["gov-demo-bucket"] == "s3://gov-bucket/lora"
    assert adapters["gov-demo-permits"].startswith("/") and adapters["gov-demo-permits"].endswith("/permits")
    # The commercial pool's engine knows nothing of them, and runs without LoRA.
    assert ADAPTERS_KEY not in biz.llm_config.experimental_configs and "enable_lora" not in biz.engine_args
