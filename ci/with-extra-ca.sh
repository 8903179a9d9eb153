#!/bin/sh
# Runs a command trusting, besides the system's certificate authorities, the ones in
# /run/secrets/ca when it is there: a TLS-inspecting proxy's CA, given to `docker build` as a
# secret (--secret id=ca,src=FILE) or to `docker run` as a read-only file
# (-v FILE:/run/secrets/ca:ro). The Dockerfile's entry point. Nothing is written into the
# image: the combined bundle lives in /tmp for this command only.
set -eu
extra=/run/secrets/ca
if [ -s "$extra" ]; then
  bundle=$(mktemp /tmp/ca-bundle.XXXXXX)
  cat /etc/ssl/certs/ca-certificates.crt "$extra" > "$bundle"
  # curl and rustup, cargo, and rustls' platform verifier (meshimg) read these.
  export SSL_CERT_FILE="$bundle" CURL_CA_BUNDLE="$bundle" CARGO_HTTP_CAINFO="$bundle"
fi
exec "$@"
