"""The stack's orchestrator: settings from .env, builders, Triton, health and verification."""
