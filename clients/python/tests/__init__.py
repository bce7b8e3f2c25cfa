"""Tests of the biobridge Python client (unittest; see scripts/test-python.sh)."""
