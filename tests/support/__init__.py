"""Test support: plain helper modules (fixtures live in conftest.py files)."""
