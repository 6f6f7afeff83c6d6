"""Kubernetes mode: pure manifest builders (objects) shared by KqiKubeSpawner and
KubernetesRunner. Importing this package needs no Kubernetes client."""
