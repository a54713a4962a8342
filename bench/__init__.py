"""``make bench``: throughput, latency, healing and footprint of Agent Foundry in one run.

Everything runs on loopback against a nats-server and a redis-server the
benchmark starts itself on free ports, and every process it starts is stopped
by pid at the end. See ``python -m bench --help`` and docs/performance.md.
"""
