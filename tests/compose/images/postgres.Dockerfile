# Stand-in for postgres:16 from Debian's PostgreSQL 15, for the compose test: the
# official image's POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB make the cluster on
# the first start, its data lives in /var/lib/postgresql/data, and pg_isready is on PATH.
ARG DEBIAN
FROM ${DEBIAN}
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
RUN mkdir -p "$PGDATA" /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
USER postgres
EXPOSE 5432
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
