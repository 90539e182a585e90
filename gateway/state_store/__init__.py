"""State shared by every gateway process through Redis: rate limits, cooldowns, retry budget.

Optional (``state.url`` in gateway.yaml); without it each process keeps its own, in memory.
Every read-modify-write is one Lua script, so two gateways can never both take the last
request of a minute. See README "Scaling out" and docs/operations.md for what happens when
Redis is down (``state.on_unavailable``).
"""
