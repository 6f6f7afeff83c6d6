# The user image (notebook pods, their init container, and job pods): a Jupyter image with git
# plus kqi-hub, which brings the server extension (enabled by the config file its wheel
# installs), the `kqi` command, the home-link maker and the job supervisor.
# Build from the repository root:
#   docker build -f helm-values/singleuser.Dockerfile -t <registry>/kqi-hub-singleuser:<tag> .
# Any image with Python >= 3.10, git, coreutils and a user 1000 works as a base.
ARG BASE_IMAGE=quay.io/jupyter/scipy-notebook:2025-06-02
FROM ${BASE_IMAGE}
USER root
COPY pyproject.toml README.md /tmp/kqi-hub/
COPY hub_ext /tmp/kqi-hub/hub_ext
COPY server_ext /tmp/kqi-hub/server_ext
COPY culler /tmp/kqi-hub/culler
COPY jupyter-config /tmp/kqi-hub/jupyter-config
RUN python3 -m pip install --no-cache-dir /tmp/kqi-hub \
 && rm -rf /tmp/kqi-hub
USER ${NB_UID}
