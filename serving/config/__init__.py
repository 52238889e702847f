"""The platform config: one validated, frozen schema (``schema``) and the library settings
and admission sections it is built from. Every other part of ``serving`` reads it; it reads none of them."""

from serving.config.home import fabriek_home
from serving.config.schema import (BUILTIN_SCHEME, DEFAULT_CONFIG_PATH, OBJECT_STORE_SCHEMES, POOL_RESOURCE_PER_REPLICA,
                                   ConfigError, GrpcSpec, ModelSpec, PlatformConfig, PoolSpec, load_config,
                                   with_overrides)

__all__ = ["BUILTIN_SCHEME", "DEFAULT_CONFIG_PATH", "OBJECT_STORE_SCHEMES", "POOL_RESOURCE_PER_REPLICA", "ConfigError", "GrpcSpec", "ModelSpec", "PlatformConfig", "PoolSpec", "fabriek_home", "load_config", "with_overrides"]
