"""Session manager and session stores."""
