"""Shared foundations with no knowledge of models or methods: errors, atomic io, dtypes, versions, seeds,
typed JSON formats and progress events. Imports nothing else from locoedit."""
