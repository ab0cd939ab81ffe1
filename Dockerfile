# syntax=docker/dockerfile:1
#
# fngate with the demo functions:
#
#   docker build -t fngate .
#   docker run -d --name fngate -p 8443:8443 \
#     -v fngate-data:/srv/fngate/data -v fngate-certs:/srv/fngate/certs fngate
#   docker cp fngate:/srv/fngate/certs/dev-ca.pem .
#   curl --cacert dev-ca.pem 'https://localhost:8443/demo/square?x=42'
#
# The volumes keep spawned calls and the generated dev CA across restarts.
# Mount a config of your own at /srv/fngate/gateway.toml (and real
# certificates) to go beyond the demo. The README's Docker section shows the
# same commands; .ci/docker-builder-check runs the builder stage without
# Docker.

FROM rust:1-bookworm AS builder
WORKDIR /build
# Everything Cargo.toml names: the library and binary in src/, and the
# hot_path bench in benches/ (cargo reads its target list even for a build).
# .ci/docker-builder-check runs this stage on exactly these files.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked \
 && install -m 0755 target/release/fngate /usr/local/bin/fngate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /srv/fngate --shell /usr/sbin/nologin fngate \
 && install -d -o fngate -g fngate /srv/fngate /srv/fngate/certs /srv/fngate/data
COPY --from=builder /usr/local/bin/fngate /usr/local/bin/fngate
COPY --chown=fngate:fngate docker/gateway.toml /srv/fngate/gateway.toml
COPY --chown=fngate:fngate examples /srv/fngate/examples
USER fngate
WORKDIR /srv/fngate
EXPOSE 8443
# Liveness over the gateway's own TLS; the dev certificate is self-issued,
# so this probe does not verify it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
  CMD ["python3", "-c", "import ssl, urllib.request; urllib.request.urlopen('https://127.0.0.1:8443/_/health', context=ssl._create_unverified_context(), timeout=4)"]
# tini reaps what exec functions leave behind (fngate is not PID 1).
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["fngate", "serve", "--config", "/srv/fngate/gateway.toml"]
