# sessiond: the worker-session gRPC service. Build: docker build -t sessiond .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRPC_VERBOSITY=ERROR

# Fixed UID/GID (USER below is numeric) so volume ownership and Kubernetes runAsUser are predictable.
RUN groupadd --system --gid 10001 sessiond \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin sessiond

WORKDIR /src
COPY clients/python ./clients/python
COPY pyproject.toml README.md LICENSE ./
COPY sessiond ./sessiond
# One pip call, so the local sessiond-client satisfies the server's sessiond-client requirement.
RUN pip install --no-cache-dir ./clients/python .

# Run outside the source tree so `python -m sessiond` imports the installed package.
WORKDIR /
USER 10001:10001

EXPOSE 50051
STOPSIGNAL SIGTERM
# grpc.health.v1 Check through the CLI: no grpc_health_probe binary needed in the image.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "sessiond", "health", "--address", "127.0.0.1:50051"]

CMD ["sessiond", "serve", "--listen", "0.0.0.0:50051"]
