"""The news: a durable queue of script items, and the desk that reads it on a session."""
