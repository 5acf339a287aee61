# syntax=docker/dockerfile:1
# readygate image (BuildKit, the default builder since Docker 23):
#   docker build -t readygate:latest .

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the compiled dependencies in target/ between builds,
# so a change in src/ recompiles readygate only. (Chosen over a stub-source dependency layer,
# which breaks as soon as Cargo.toml declares a bench, example or build script.)
# The binary is copied out because the cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin readygate \
 && cp target/release/readygate /readygate

# glibc + libgcc (the "cc" variant) for the Rust binary; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /readygate /readygate
# nonroot is 65532:65532, the Deployment's runAsUser/runAsGroup.
USER 65532:65532
# 9443: HTTPS admission webhook; 8080: plain-HTTP /healthz, /readyz, /metrics.
EXPOSE 9443 8080
ENTRYPOINT ["/readygate"]
CMD ["serve"]
