"""Profiling a torch model into a manifest (needs the torch extra)."""
