// overlay chat page: live updates over SSE.
