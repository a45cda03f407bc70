"""The VX11 benchmark (``scripts/bench``): accept throughput, end-to-end throughput and
end-to-end latency of a private VX11, the same spawns through a bare Celery task, a deep
queue drained, and the bare sandbox's cost per run, each against a baseline measured in
the same run.

The figures and goals come from issues 2, 3 and 6; docs/benchmarks.md says what each
one means.
"""
