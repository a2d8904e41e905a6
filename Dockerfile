# syntax=docker/dockerfile:1
# mcpflip as a container image, for users who build their own:
#   docker build -t mcpflip .
#   docker run -d -p 8080:8080 -v "$PWD/mcpflip.toml:/etc/mcpflip/mcpflip.toml:ro" \
#     -v mcpflip-state:/var/lib/mcpflip mcpflip
# docs/install.md says more (volumes, ports, stopping with a drain).

# ---- build ------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches the registry and the target directory between builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mcpflip --bin mcpflip \
    && cp target/release/mcpflip /usr/local/bin/mcpflip

# ---- run --------------------------------------------------------------------
FROM debian:bookworm-slim
# A fixed uid/gid, so that volume ownership is predictable across rebuilds.
RUN groupadd --system --gid 10001 mcpflip \
    && useradd --system --uid 10001 --gid mcpflip --home-dir /var/lib/mcpflip \
       --no-create-home --shell /usr/sbin/nologin mcpflip \
    && install -d -m 0700 -o mcpflip -g mcpflip /var/lib/mcpflip /run/mcpflip \
    && install -d -m 0755 /etc/mcpflip
COPY --from=build /usr/local/bin/mcpflip /usr/bin/mcpflip
COPY contrib/debian/mcpflip.toml /etc/mcpflip/mcpflip.toml
USER 10001:10001
ENV MCPFLIP_CONFIG=/etc/mcpflip/mcpflip.toml
# The state file and the control socket (share /run/mcpflip with a ctl sidecar).
VOLUME ["/var/lib/mcpflip", "/run/mcpflip"]
# 8080: the public listener; 9090: the admin listener (/metrics, /status,
# /healthz), which the config keeps on 127.0.0.1 unless you change it.
EXPOSE 8080 9090
# Liveness from inside the container, with bash alone (the slim image has no curl).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM drains every slot up to [drain] deadline: stop with `docker stop -t 330`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/mcpflip"]
CMD ["run"]
