# The image the Helm chart runs. Not built by CI (no container engine there):
#   docker build -t registry.example.com/wsgate:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wsgate

# glibc and CA roots only; no shell, no package manager; runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wsgate /usr/local/bin/wsgate
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/wsgate"]
CMD ["controller"]
