"""fabriek serving: wires the policy core, Ray Serve, vLLM and the APIs together.

Public entry points: ``serving.app.build_app`` (Ray Serve import path),
``serving.config.load_config`` and the ``fabriek`` CLI (``serving.cli``).
"""
