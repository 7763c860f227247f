# HAProxy, Prometheus and Redis (the task store) from Debian's packages, on the same base as the service image, for
# machines that reach Debian's archive but no image registry. Where a registry is reachable the
# official haproxy and prom/prometheus images serve the same configuration files.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends haproxy prometheus redis-server \
    && rm -rf /var/lib/apt/lists/* /usr/share/prometheus/consoles*
USER nobody
