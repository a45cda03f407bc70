"""The VX11 benchmark (``scripts/bench``): accept throughput, end-to-end throughput and
end-to-end latency of a private VX11, each against a baseline measured in the same run.

The figures and goals come from issue 2; docs/benchmarks.md says what each one means.
"""
