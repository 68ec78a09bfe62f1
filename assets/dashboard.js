// overlay dashboard: live updates over SSE.
