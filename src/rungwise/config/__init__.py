"""task.yaml and every other configuration schema: typed, documented, validated with clear errors.

A leaf package: it imports only the core (types, errors) and pydantic, so every layer above may
use it. Per-rung and per-backend sections are validated by the models their implementations
register (:mod:`rungwise.registry`).
"""
