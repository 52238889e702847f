"""fabriek's policy core: tenants, pools, quotas and routing decisions.

Pure Python (standard library and pydantic only): no Ray, no HTTP, no torch. The
admission pipeline lands here with the tenants-and-pools work (issue 3); ``serving``
wires it into the ingress.
"""
