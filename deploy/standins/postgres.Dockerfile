# Stand-in for postgres:15, built by deploy/check-containers.sh only where the public image
# registry cannot be reached. Made from Debian's postgresql-15 on the debian:bookworm stand-in,
# with what docker-compose.yml relies on of the official image: the entrypoint's POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, POSTGRES_INITDB_ARGS and /docker-entrypoint-initdb.d, PGDATA
# at /var/lib/postgresql/data (a volume the postgres user can write), a postgres user, the
# server binaries on PATH and pg_isready, bash and psql. Nothing shipped depends on this file.
FROM debian:bookworm

# No cluster at install time (the entrypoint makes one in PGDATA), and no service start during
# the build (policy-rc.d). listen_addresses='*' in the sample: the official image does the same,
# so that initdb's postgresql.conf (and a pg_basebackup copy of it) listens beyond loopback.
# hadolint ignore=DL3008
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; \
    apt-get update; \
    apt-get install -y --no-install-recommends postgresql-common; \
    sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf; \
    apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d; \
    sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/share/postgresql/15/postgresql.conf.sample; \
    grep -q "^listen_addresses = '\*'" /usr/share/postgresql/15/postgresql.conf.sample; \
    mkdir -p /docker-entrypoint-initdb.d /var/run/postgresql; \
    chown postgres:postgres /var/run/postgresql; chmod 3777 /var/run/postgresql

ENV PG_MAJOR=15 \
    LANG=C.UTF-8 \
    PGDATA=/var/lib/postgresql/data \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin

# 1777 as in the official image: a container started as another user can still make PGDATA
# below it (the replica service's PGDATA is a subdirectory of this volume).
RUN mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 1777 "$PGDATA"
VOLUME /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh

LABEL org.pgshift.standin="postgres:15 from Debian's postgresql-15"
ENTRYPOINT ["docker-entrypoint.sh"]
# postgres stops on SIGINT with a fast shutdown, as in the official image.
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
