# Stand-in for rust:1-bookworm, built by deploy/check-containers.sh only where the public image
# registry cannot be reached: the debian:bookworm stand-in with a C toolchain (ring's build
# script compiles C and assembly) and this machine's Rust toolchain, which the script copies into
# the build context as toolchain/ (a rustc sysroot: bin/, lib/, libexec/, etc/; no docs).
# CARGO_HOME and PATH as in the official image.
#
# Offline cargo: the script also copies this machine's cargo registry (registry/: the index cache
# and the .crate files, after `cargo fetch --locked` on the host) and cargo here runs with
# net.offline. Where this stand-in is needed, crates.io over HTTPS is not something a container
# can count on (this machine's own HTTPS goes through a CA the containers do not trust), and the
# Dockerfile's `cargo build --locked` needs nothing else. The real image fetches from crates.io.
# Nothing shipped depends on this file.
FROM debian:bookworm

# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config git; \
    rm -rf /var/lib/apt/lists/*

COPY toolchain/ /usr/local/rust/
COPY registry/ /usr/local/cargo/registry/
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p "$CARGO_HOME/bin" \
    && printf '[net]\noffline = true\n' >"$CARGO_HOME/config.toml" \
    && chmod -R a+w "$CARGO_HOME" \
    && rustc --version && cargo --version

LABEL org.pgshift.standin="rust:1-bookworm from this machine's Rust toolchain, cargo offline"
CMD ["bash"]
