# Candystore container image (used by ops/compose.yaml).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin candystore

FROM debian:bookworm-slim
RUN useradd --system --no-create-home candystore
COPY --from=build /src/target/release/candystore /usr/local/bin/candystore
USER candystore
# Production stores in PostgreSQL: named here, whatever the built-in default is.
ENV DATABASE_URL=postgres://candystore@postgres:5432/candystore
EXPOSE 8683 9090
ENTRYPOINT ["/usr/local/bin/candystore"]
CMD ["serve"]
