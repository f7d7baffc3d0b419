"""Benchmarks behind BENCHMARKS.md (`raydund bench ...` from a checkout): developer tooling, not the package."""
