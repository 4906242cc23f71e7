"""Faults injected while a tiny run is in flight, against the real control plane and the process node.

Each test asserts the final phase, reason, message, Events and the artifacts on the output volume, and
records what it saw; ``python -m tests.faults > docs/faults.md`` runs the suite and renders the table.
"""
