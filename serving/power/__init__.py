"""The platform's power governor: measured power against the operator's caps, in running limits."""
