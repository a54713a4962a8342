"""The supervisor (see issue: heartbeats and the healer)."""
