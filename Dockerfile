# berth's container image: the controller (`berth run`) for Kubernetes or any
# container runtime. The contract it keeps (shared with charts/):
#
#   * user `berth`, uid/gid 10001, HOME /home/berth; run it as 10001 (ssh reads
#     ~/.ssh through the passwd entry, not $HOME).
#   * ENTRYPOINT tini -- berth: berth's SSH ControlMasters daemonize and must be
#     reaped, and tini forwards SIGTERM (berth then stops after its current
#     cycle, releasing the deploy lock).
#   * a read-only root filesystem works: the writable paths are
#     /var/lib/berth (Git checkouts) and /tmp (SSH control sockets), both
#     emptyDir/tmpfs (noexec is fine: `berth run` executes nothing from the
#     repository: no hooks, no `$(...)` in secrets).
#   * secrets mounted read-only: the fleet's SSH key at
#     /home/berth/.ssh/id_ed25519 (ssh's default identity; mode 0400/0440 with
#     fsGroup 10001), the fleet's known_hosts at /etc/berth/ssh/known_hosts
#     (pass --known-hosts), Git credentials at /etc/berth/git/{ssh-key,
#     known_hosts,token}, the API token at /etc/berth/api/token, the webhook
#     secret at /etc/berth/webhook/secret, a berth.yml at
#     /etc/berth/config/berth.yml (--apps-file).
#   * HTTP (metrics, probes, API, webhooks) on port 9090.
#
# The berth binary is built OUTSIDE the image and copied from the build
# context: no Rust toolchain image can be pulled where berth is developed (only
# Debian packages are reachable), so there is no builder stage. Build it on
# Debian bookworm (or anything with glibc <= 2.36): it links glibc, libssl3 and
# zlib dynamically, which this base provides.
#
#   cargo build --release --locked && docker build -t berth .
#
# or scripts/build-image.sh, which does both (and, with --local-base, makes
# debian:bookworm-slim locally with debootstrap when no registry can be pulled
# from). BERTH_BINARY names the binary inside the context; .dockerignore lets
# only target/release/berth through (for another binary, build-image.sh
# --binary PATH stages it in a context of its own).

FROM debian:bookworm-slim

# openssh-client: berth's SSH to the fleet; git: for humans debugging a
# checkout (berth itself fetches with libgit2); libssl3, zlib1g: berth's own
# shared libraries (also pulled in by the above, named so they stay).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates git libssl3 openssh-client tini zlib1g \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

# /var/lib/berth is sticky and world-writable like /tmp: `docker run --tmpfs
# /var/lib/berth` gives the tmpfs the directory's mode but not its owner, so
# 0750 berth would leave it root's. (A volume keeps the owner too; a Kubernetes
# emptyDir is 0777 with the pod's fsGroup.)
RUN groupadd --gid 10001 berth \
    && useradd --uid 10001 --gid 10001 --home-dir /home/berth --create-home \
        --shell /usr/sbin/nologin berth \
    && install -d -m 0700 -o berth -g berth /home/berth/.ssh \
    && install -d -m 1777 -o berth -g berth /var/lib/berth

ARG BERTH_BINARY=target/release/berth
COPY ${BERTH_BINARY} /usr/local/bin/berth

# Last, so a new version or commit does not invalidate the layers above.
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="berth" \
      org.opencontainers.image.description="GitOps reconciliation controller for Kamal 2 deployments" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# tini also reaps when it is not PID 1 (a pod sharing its process namespace).
# BERTH_LISTEN/BERTH_CHECKOUT: the container's defaults hold even when the
# arguments are replaced (`docker run berth run --repo …`).
ENV HOME=/home/berth \
    TINI_SUBREAPER=1 \
    BERTH_LISTEN=0.0.0.0:9090 \
    BERTH_CHECKOUT=/var/lib/berth/checkout
VOLUME ["/var/lib/berth"]
WORKDIR /home/berth
USER 10001:10001
EXPOSE 9090
ENTRYPOINT ["tini", "--", "berth"]
CMD ["run", "--listen", "0.0.0.0:9090", "--checkout", "/var/lib/berth/checkout"]
