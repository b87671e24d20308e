# The operator image: one statically linked binary and the CA bundle, on an empty base.
#
# Build it with `make image` (hack/image.sh). The binary is compiled on the host
# (x86_64-unknown-linux-gnu with crt-static, checked to be static) and staged together with the
# host's Debian CA bundle into the build context, target/image/context/:
#   controller               the operator
#   ca-certificates.crt      trust roots for Adobe's TLS endpoints (IMS, Experience Platform)
# so no builder image and no network are needed while building.
FROM scratch

ARG VERSION
ARG SOURCE=""

LABEL org.opencontainers.image.title="audience-operator" \
      org.opencontainers.image.description="Kubernetes operator that manages Adobe Experience Platform external audiences declaratively" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}"

# The platform verifier (rustls-native-certs) reads the standard Debian path; `--aep-ca-file`
# replaces these roots with another bundle.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY controller /controller

# Numeric, so that `runAsNonRoot: true` can be verified by the kubelet without an /etc/passwd.
USER 65532:65532

ENTRYPOINT ["/controller"]
CMD ["run"]
