# Prometheus and Alertmanager from Debian's packages, for hosts that reach a Debian mirror but no
# container registry (elsewhere compose runs the upstream prom/ images). Built and used by the
# compose test; by hand:
#   podman build -f docker/monitoring.Dockerfile --build-arg BASE=localhost/debian:bookworm -t genserve-monitoring:0.1.0 .
#   PROMETHEUS_IMAGE=genserve-monitoring:0.1.0 ALERTMANAGER_IMAGE=genserve-monitoring:0.1.0 podman-compose --profile cpu up ...
# Its binaries answer to the upstream images' names (compose names the entrypoint).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget prometheus prometheus-alertmanager \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/prometheus-alertmanager /usr/local/bin/alertmanager
