# pgshift container image.
#
#   docker build -t pgshift .
#   docker run --rm -p 6432:6432 -p 6480:6480 \
#     -e PGSHIFT_PRIMARY_URL=postgres://db.internal:5432 \
#     -e PGSHIFT_ADMIN_TOKEN_FILE=/run/secrets/pgshift_admin_token \
#     -v "$PWD/proxy.toml:/etc/pgshift/proxy.toml:ro" pgshift
#
# The admin port listens on 0.0.0.0 in the image (PGSHIFT_ADMIN_LISTEN below), and pgshift
# refuses to start with an admin port beyond loopback and no token: give PGSHIFT_ADMIN_TOKEN,
# or PGSHIFT_ADMIN_TOKEN_FILE (a mounted secret), or set PGSHIFT_ADMIN_LISTEN=127.0.0.1:6480 to
# keep the admin port inside the container (the HEALTHCHECK still works then).
# docs/operator-guide.md, "Running in a container", has the details.

# ---- build ------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependency layer: build every dependency against stub sources, so that editing src/ rebuilds
# only pgshift itself. Explicit [[bench]]/[[test]]/[[example]] targets are cut from this stub
# manifest (their files are not copied yet); dependency artifacts do not depend on them.
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[\[(bench|test|example)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' Cargo.toml > Cargo.stub.toml \
    && mv Cargo.stub.toml Cargo.toml \
    && mkdir -p src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real build. touch: COPY keeps the files' old mtimes, which cargo could take for older
# than the stub build's outputs.
COPY . .
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin pgshift \
    && install -m 0755 target/release/pgshift /usr/local/bin/pgshift \
    && pgshift --version

# ---- runtime ----------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: verify-ca / verify-full toward PostgreSQL with a public CA bundle.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid, so that mounted secrets and certificates can be made readable for it and
# Kubernetes' runAsNonRoot can check it. /var/lib/pgshift: writable state (the migration
# state_file, e.g. PGSHIFT_MIGRATION_STATE_FILE=/var/lib/pgshift/migration.json).
RUN groupadd --system --gid 10001 pgshift \
    && useradd --system --uid 10001 --gid pgshift --home-dir /var/lib/pgshift --shell /usr/sbin/nologin pgshift \
    && mkdir -p /etc/pgshift/certs /var/lib/pgshift \
    && chown pgshift:pgshift /var/lib/pgshift

COPY --from=builder /usr/local/bin/pgshift /usr/local/bin/pgshift
COPY proxy.toml /etc/pgshift/proxy.toml

# Relative paths in proxy.toml (certs/server.crt) resolve here: mount certificates at
# /etc/pgshift/certs.
WORKDIR /etc/pgshift

# Listen beyond the container's loopback; every other setting comes from proxy.toml or
# PGSHIFT_<SECTION>_<KEY> variables given at run time.
ENV PGSHIFT_PROXY_LISTEN=0.0.0.0:6432 \
    PGSHIFT_ADMIN_LISTEN=0.0.0.0:6480

EXPOSE 6432 6480

USER 10001:10001

# No curl in the image: the binary asks its own admin port (GET /health, 200 = healthy).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["pgshift", "healthcheck", "--timeout", "3s"]

# SIGTERM drains: running transactions finish (up to [proxy] shutdown_timeout, 30s), so give
# `docker stop` a longer -t than that.
STOPSIGNAL SIGTERM

CMD ["pgshift", "--config", "/etc/pgshift/proxy.toml"]
