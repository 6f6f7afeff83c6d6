"""Kubernetes test helpers: kmock shims with a fake kubelet, option sets, validation."""
