"""Route -> variant -> attempts: sticky assignment (``assignment``), the names a request may
call (``targets``), and the dispatcher that runs a variant with its deadline, retries,
fallbacks, cooldowns and shadows, recording every attempt as an event."""
