"""Ray Serve ranking app: champion, canary, shadow, guardrails, decision log."""
