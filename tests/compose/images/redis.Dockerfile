# Stand-in for redis:7 from Debian's redis-server, for the compose test: the same
# programs on PATH (redis-server, redis-cli), the same /data working directory, run as
# the redis user.
ARG DEBIAN
FROM ${DEBIAN}
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
