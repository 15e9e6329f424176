"""Compositions of the stages: plain generation, and the demo (localize, edit and evaluate on the toy world)."""
