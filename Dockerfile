# Two images from one build: `--target sluice` (the sidecar) and `--target upstream-demo`.
#   docker build --target sluice -t sluice/sluice:0.1.0 .
#   docker build --target upstream-demo -t sluice/upstream-demo:0.1.0 .
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: a change to sluice's code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY upstream-demo/Cargo.toml upstream-demo/Cargo.toml
RUN mkdir -p src upstream-demo/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > upstream-demo/src/main.rs \
    && cargo build --release --locked --workspace --bins \
    && rm -rf src upstream-demo/src
COPY src src
COPY upstream-demo upstream-demo
RUN touch src/main.rs src/lib.rs upstream-demo/src/main.rs \
    && cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim AS sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/
COPY conf /etc/sluice
USER 10001:10001
EXPOSE 8080 9090
# bash's /dev/tcp: no curl in the image. The admin listener answers /health without a token.
HEALTHCHECK --interval=5s --timeout=2s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["sluice"]
CMD ["--config", "/etc/sluice/compose.yaml"]

FROM debian:bookworm-slim AS upstream-demo
COPY --from=build /src/target/release/upstream-demo /usr/local/bin/
USER 10001:10001
EXPOSE 9000
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9000"]
ENTRYPOINT ["upstream-demo"]
CMD ["--listen", "0.0.0.0:9000"]
