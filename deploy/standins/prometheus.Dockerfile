# Stand-in for prom/prometheus, built by deploy/check-containers.sh only where the public image
# registry cannot be reached: Debian's prometheus on the debian:bookworm stand-in, laid out as
# the official image is: ENTRYPOINT the prometheus binary, default config
# /etc/prometheus/prometheus.yml, running as nobody in WORKDIR /prometheus, the TSDB in
# /prometheus/data when the command (as in docker-compose.yml) names no --storage.tsdb.path:
# Debian's build defaults to /var/lib/prometheus/metrics2, which is linked there.
# Nothing shipped depends on this file.
FROM debian:bookworm

# hadolint ignore=DL3008
RUN set -eux; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 0755 /usr/sbin/policy-rc.d; \
    apt-get update; \
    apt-get install -y --no-install-recommends prometheus; \
    rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d; \
    mkdir -p /prometheus/data /etc/prometheus; \
    chown -R nobody:nogroup /prometheus; \
    rm -rf /var/lib/prometheus/metrics2; \
    ln -s /prometheus/data /var/lib/prometheus/metrics2; \
    /bin/prometheus --version

USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
LABEL org.pgshift.standin="prom/prometheus from Debian's prometheus"
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
