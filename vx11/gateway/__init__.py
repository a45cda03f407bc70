"""The gateway: the Flask app that gunicorn runs, its API (:mod:`vx11.gateway.api`) and
what the views call — submit, lifecycle, metrics, the services they share. It imports
the core, never the workers: jobs are published by task name."""
