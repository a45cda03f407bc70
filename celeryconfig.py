"""Celery settings for VX11, read by the workers (``celery -A workers``) and by the
gateway's publishing client. URLs come from ``VX11_*`` through :mod:`vx11.core.config`.

The broker is Redis (``VX11_BROKER_URL`` empty: the same Redis as the windows) or
RabbitMQ (``amqp://...``); both are tested, and the settings that differ are marked."""

from urllib.parse import urlsplit

from kombu import Exchange, Queue

from vx11.core.callbacks import CALLBACK_QUEUE, CALLBACK_TASK
from vx11.core.config import Settings

_settings = Settings.from_env()

broker_url = _settings.effective_broker_url
result_backend = _settings.effective_result_backend
_AMQP_BROKER = urlsplit(broker_url).scheme in ("amqp", "amqps", "pyamqp")

# JSON only: a pickle payload from anyone who can write to the broker would run code
# in the worker itself, outside every sandbox.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# acks_late: a job is acknowledged only when it has finished, so a worker that dies
# loses no queued job. Its danger is double execution on redelivery; the spawner
# refuses to run a spawn whose record has already left QUEUED (see workers/spawner.py).
task_acks_late = True
# A pool process that dies mid-spawn (killed, out of memory) has its job acknowledged
# as failed, not handed back: the workers' sweeper, which sees the run's heartbeat stop,
# ends the spawn ERROR worker_lost or retries it (max_retries) - one judge, so a job
# delivered twice can never be mistaken for a lost run.
task_reject_on_worker_lost = False
worker_prefetch_multiplier = 1
# No STARTED state in the result backend (Celery's default): it was one more Redis write
# and PUBLISH per spawn, about 1.1 ms of worker CPU (the bare task with these settings,
# 128 against 200 tasks/s). A running spawn is RUNNING in the ledger, and Flower shows
# its task STARTED from the task-started event, not from the backend.
task_track_started = False
# Workers send task events (received, started, succeeded...) for Flower. The gateway
# sends no "task-sent" event: it would double the messages published per spawn, and a
# job not yet received shows as the queue's depth and as QUEUED in the ledger.
worker_send_task_events = True
task_send_sent_event = False
result_expires = _settings.result_expires

# How long a job may stay delivered and unacknowledged: the longest spawn, with room
# for Celery's time-limit margin.
_LONGEST_UNACKED = _settings.spawn_max_ttl + 600
if _AMQP_BROKER:
    # RabbitMQ hands an unacknowledged job back as soon as its consumer's channel closes:
    # the worker died or lost its connection (the spawner's claim, a compare-and-set in
    # the ledger, decides what that delivery may do). It also closes a channel whose
    # delivery has been unacked for longer than its consumer timeout (30 min by
    # default), and the worker stops; this consumer argument raises that timeout past
    # the longest spawn on RabbitMQ 3.12 and later (older versions ignore it: set
    # consumer_timeout on the server, docs/deploy.md). Classic durable queues (Celery's
    # default): one broker node, and no native delayed delivery for countdown retries.
    _SPAWN_CONSUMER_ARGUMENTS: dict[str, int] | None = {
        "x-consumer-timeout": _LONGEST_UNACKED * 1000
    }
    # Publisher confirms: a publish returns once the broker has queued (and, the
    # message being persistent, written) the job, so a 202 is never answered for a job
    # the broker could still drop, and the queue's depth counts it from then on.
    broker_transport_options: dict[str, object] = {"confirm_publish": True}
else:
    # Redis redelivers an unacknowledged job after visibility_timeout: it must be longer
    # than the longest spawn can run, or a long spawn would be handed to a second worker.
    _SPAWN_CONSUMER_ARGUMENTS = None
    broker_transport_options = {
        "visibility_timeout": _LONGEST_UNACKED,
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
redis_socket_connect_timeout = 2
redis_socket_timeout = 5
redis_retry_on_timeout = True
broker_connection_retry_on_startup = True
broker_connection_timeout = 2
# AMQP only (Redis has none): a worker whose broker vanished without closing the
# connection notices within two beats.
broker_heartbeat = 10
# A lost broker connection does not stop the spawns running: the sandbox still kills each
# at its ttl, the ledger records its end, and a redelivered job never runs a live spawn
# again (Celery's default; it says so with a warning at every reconnect).
worker_cancel_long_running_tasks_on_connection_loss = False

# The gateway publishes with a short retry, so a down broker is a quick 503.
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

task_default_queue = _settings.spawn_queue
# Callback deliveries (vx11.callback, workers/callbacks.py) have a queue of their own:
# a slow or failing receiver, retried with backoff, never waits in line with spawns,
# and callbacks can be given workers of their own (`--queues callbacks`). The stack's
# worker (vx11.cli.stack.worker_argv, compose.yaml) consumes both queues.
task_queues = (
    Queue(
        _settings.spawn_queue,
        Exchange(_settings.spawn_queue),
        routing_key="spawn",
        consumer_arguments=_SPAWN_CONSUMER_ARGUMENTS,
    ),
    Queue(CALLBACK_QUEUE, Exchange(CALLBACK_QUEUE), routing_key="callback"),
)
task_routes = {
    "vx11.spawn": {"queue": _settings.spawn_queue, "routing_key": "spawn"},
    CALLBACK_TASK: {"queue": CALLBACK_QUEUE, "routing_key": "callback"},
}

worker_hijack_root_logger = False
