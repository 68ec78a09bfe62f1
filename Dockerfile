# overlay: multi-stage build. Build with the Rust image, run on slim Debian as a non-root user.
#   docker build -t overlay .
#   docker run --rm -p 8000:8000 overlay controller --listen 0.0.0.0:8000
# The four-user demo as separate containers: docker compose up (see docker-compose.yml).

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits don't rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > benches/overlay.rs \
    && cargo build --release --locked --bin overlay
COPY src ./src
COPY assets ./assets
COPY benches ./benches
COPY config.yaml ./config.yaml
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin overlay

FROM debian:bookworm-slim
# ca-certificates: the system's roots, which AI providers' HTTPS is checked against (the
# overlay's own hops use its CA, pinned by the controller's root fingerprint).
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin overlay \
    && mkdir -p /data /provision /etc/overlay && chown overlay:overlay /data /provision \
    && chmod 700 /data /provision
COPY --from=build /src/target/release/overlay /usr/local/bin/overlay
COPY config.yaml /etc/overlay/config.yaml
ENV OVERLAY_CONFIG=/etc/overlay/config.yaml \
    OVERLAY_DATA_DIR=/data \
    RUST_LOG=info
VOLUME ["/data"]
USER overlay
EXPOSE 8000 8443 5000 5001 5002 5003 10000 10001 10002 10003 11000 11001 11002 11003
ENTRYPOINT ["overlay"]
CMD ["--help"]
