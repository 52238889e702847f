"""fabriek's policy core: tenants, API keys, and admission of requests to pools.

Pure Python (standard library and pydantic only): no Ray, no HTTP, no torch, so that the
HTTP ingress in ``serving`` and a later gRPC API take the same decisions.
"""

from routers.admission import AdmissionPipeline
from routers.api_keys import KeyRecord, KeyRing
from routers.authentication import Authenticator
from routers.cache_salt import cache_salt_for, load_or_create_secret
from routers.isolation_domains import IsolationDomain, derive_domains
from routers.interfaces import Admission, AdmissionRequest, Candidate, Rejection, RejectionReason, Route
from routers.key_file import KeyFile, KeyFileError, KeyFileWatcher
from routers.tenants import ClassPolicy, Tenancy, Tenant, TenantClass

__all__ = ["Admission", "AdmissionPipeline", "AdmissionRequest", "Authenticator", "Candidate",
           "ClassPolicy", "IsolationDomain", "KeyFile", "KeyFileError", "KeyFileWatcher", "KeyRecord", "KeyRing",
           "Rejection", "RejectionReason", "Route", "Tenancy", "Tenant", "TenantClass",
           "cache_salt_for", "derive_domains", "load_or_create_secret"]
