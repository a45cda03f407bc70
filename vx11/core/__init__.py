"""The core VX11 shares between the gateway, the workers and the CLI: settings,
errors, spawn states, the ledger, the audit log, policy windows, tokens, events, logs.
It imports no Flask, builds no Celery app, and knows nothing of the gateway or the
workers."""
