"""Admission filters, one per module; ``AdmissionPipeline`` runs them in this order."""

from routers.filters.model_access import ModelAccessFilter
from routers.filters.pool_class import PoolClassFilter
from routers.filters.readiness import ReadinessFilter

__all__ = ["ModelAccessFilter", "PoolClassFilter", "ReadinessFilter"]
