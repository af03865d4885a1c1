# syntax=docker/dockerfile:1
#
# wallets-worker image: a static binary on distroless (no shell, no package
# manager), running as the unprivileged user 65532. deploy/README.md says how
# compose and Kubernetes run it; deploy/deploy_test.go checks this file.
#
#   docker build -t wallets-worker:local .
#   docker run --rm -p 9090:9090 wallets-worker:local     # embedded NATS + ledger in /data
#
# Pin the base images by digest (image@sha256:…) in a release pipeline; the
# tags below keep the file readable.

# The builder runs on the build machine's platform and cross-compiles, so a
# multi-platform build (docker buildx build --platform linux/amd64,linux/arm64)
# needs no emulation. Its Go minor version follows go.mod.
FROM --platform=$BUILDPLATFORM golang:1.26-alpine AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    export CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH && \
    go build -trimpath -ldflags "-s -w" -o /out/wallets-worker ./cmd/wallets-worker && \
    go build -trimpath -ldflags "-s -w" -o /out/healthprobe ./deploy/healthprobe && \
    mkdir /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wallets-worker /usr/local/bin/wallets-worker
# The compose health check: the image has no curl or wget (deploy/healthprobe).
COPY --from=build /out/healthprobe /usr/local/bin/healthprobe
# Only the embedded mode (no --nats-url / --ledger-url) writes files.
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
WORKDIR /data
ENV WALLETS_WORKER_HTTP_ADDR=0.0.0.0:9090 \
    WALLETS_WORKER_DATA_DIR=/data
# /metrics, /healthz and /readyz.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/wallets-worker"]
CMD ["run"]
