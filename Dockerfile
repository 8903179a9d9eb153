# meshos in a container: the bit-identical image from any machine with Docker or Podman.
#
#   docker build -t meshos .
#   docker run --rm -v "$PWD/out:/src/out" meshos make image BOARD=rpi3
#
# README.md ("Building in a container") says how to keep the package cache warm between runs,
# pass a signing key and give a TLS-inspecting proxy's CA; none of them ends up in a layer.

# Any Debian 12 (bookworm) root: the registry's, or one made locally with mmdebstrap.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# The Rust release the images are built with: a different one compiles meshd to other bytes.
ARG RUST_VERSION=1.95.0

ENV DEBIAN_FRONTEND=noninteractive \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    MESHOS_CACHE=/cache \
    CARGO_PROFILE_DEV_DEBUG=0 \
    CARGO_INCREMENTAL=0

WORKDIR /src
COPY ci/setup-host.sh ci/with-extra-ca.sh ci/

# rustup, then the host packages and Rust targets an image build needs: the same script and
# list `make image` uses on a Debian host (ci/setup-host.sh build).
RUN --mount=type=secret,id=ca \
    apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates curl \
    && ci/with-extra-ca.sh sh -c 'curl --proto =https --tlsv1.2 -sSf \
         "https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu/rustup-init" -o /tmp/rustup-init \
       && chmod +x /tmp/rustup-init \
       && /tmp/rustup-init -y -q --profile minimal --default-toolchain "$RUST_VERSION" --no-modify-path \
       && ci/setup-host.sh build' \
    && rm -rf /tmp/rustup-init /var/lib/apt/lists/*

COPY . /src
# meshimg itself (without debug info: a smaller layer), so a run starts with the image build.
RUN --mount=type=secret,id=ca ci/with-extra-ca.sh cargo build --locked -q -p meshimg

ENTRYPOINT ["/src/ci/with-extra-ca.sh"]
CMD ["make", "image"]
