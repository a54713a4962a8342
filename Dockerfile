# One image for the gateway, the monitor and the healer (which launches the
# worker fleet). compose.yaml picks the service with `command:`.
#   docker build -t agent-foundry .
#   docker run --rm agent-foundry python -m gateway --help
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY foundry foundry
COPY workers workers
COPY gateway gateway
COPY healer healer
COPY monitor monitor
COPY orchestrator orchestrator
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# bubblewrap: the exec handler's sandbox (see docs/handlers.md for what the container
# must allow: user namespaces and a /proc mount, e.g. compose.yaml's healer service).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 foundry \
    && mkdir /data && chown foundry:foundry /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER foundry
WORKDIR /home/foundry
ENV FOUNDRY_DATA_DIR=/data \
    PYTHONUNBUFFERED=1
VOLUME ["/data"]
# gateway, healer, monitor (FOUNDRY_GATEWAY_PORT, FOUNDRY_HEALER_PORT, FOUNDRY_MONITOR_PORT)
EXPOSE 8080 8081 8082
CMD ["python", "-m", "gateway"]
