# The hub image: the zero-to-jupyterhub chart's own hub image plus kqi-hub (KqiKubeSpawner,
# the kqi service with its KubernetesRunner, the kqi-culler service).
# Build from the repository root:
#   docker build -f helm-values/hub.Dockerfile --build-arg HUB_IMAGE=quay.io/jupyterhub/k8s-hub:<chart version> -t <registry>/kqi-hub-hub:<tag> .
# Use the chart version you deploy: that image pins jupyterhub 5.5 and jupyterhub-kubespawner 7.1,
# which kqi-hub accepts as they are.
ARG HUB_IMAGE=quay.io/jupyterhub/k8s-hub:set-to-the-chart-version
FROM ${HUB_IMAGE}
USER root
COPY pyproject.toml README.md /tmp/kqi-hub/
COPY hub_ext /tmp/kqi-hub/hub_ext
COPY server_ext /tmp/kqi-hub/server_ext
COPY culler /tmp/kqi-hub/culler
COPY jupyter-config /tmp/kqi-hub/jupyter-config
RUN python3 -m pip install --no-cache-dir "/tmp/kqi-hub[kubernetes]" \
 && rm -rf /tmp/kqi-hub
USER 1000
