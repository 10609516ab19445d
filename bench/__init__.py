"""Benchmarks: scripts that print figures about a real worker; none asserts on timing."""
