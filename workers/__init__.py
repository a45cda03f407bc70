"""The VX11 workers: the Celery app (:mod:`workers.celery`, which ``celery -A workers``
finds by Celery's own convention), the spawner, the sweeper, callback delivery, and the
sandbox (:mod:`workers.sandbox`, a library of its own: it imports no Celery, Flask,
SQLAlchemy or Redis). Workers import the core of :mod:`vx11`, never its gateway."""
