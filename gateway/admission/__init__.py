"""What a request may ask for and hold, decided before any variant runs: API keys and their
scopes, request bounds (n, max_tokens, messages, characters), per-key request and token rates,
and the concurrency slots."""
