"""Helpers for slurmless's own tests and benchmarks: never imported by the runtime packages."""
