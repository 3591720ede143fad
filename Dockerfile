# Multi-stage: build both binaries with cmake present, ship them on a slim runtime.
FROM rust:1-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY upstream-demo upstream-demo
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
COPY --from=build /src/target/release/sluice /src/target/release/upstream-demo /usr/local/bin/
COPY conf /etc/sluice
USER nobody
EXPOSE 8080 9090 9000
# Health checks in docker-compose.yml use bash's /dev/tcp: no curl needed in the image.
CMD ["sluice", "--config", "/etc/sluice/compose.yaml"]
