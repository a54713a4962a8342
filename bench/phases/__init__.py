"""The benchmark's phases, one module each: throughput, http, latency, healing, footprint."""
