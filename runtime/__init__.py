"""API process: FastAPI app, HTTP and WebSocket protocol, CLI, IPC client to the engine."""
