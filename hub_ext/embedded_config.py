"""JupyterHub config of the embedded platform (loaded by ``kqi-hub``).

Everything lives under KQI_DATA_ROOT: the hub's state in hub/, the kqi service database,
datasets and users. A ``kqi_hub_config.py`` in the working directory runs last, with the same
``c``, for local changes; options of the kqi service are appended to
``c.JupyterHub.services[0]["command"]`` (e.g. ``--KqiService.max_datasets=3``); the culler's
are ``c.KqiCuller.*`` (e.g. ``c.KqiCuller.idle_timeout = 3600``).
"""

import json
import os
import secrets
import shutil
import sys
from pathlib import Path

from hub_ext.leftovers import service_pid_file

c = get_config()  # noqa: F821

data_root = Path(os.environ.get("KQI_DATA_ROOT", ".kqi-data")).absolute()
hub_dir = data_root / "hub"
hub_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
bin_dir = Path(sys.executable).parent


def _secret(name: str) -> str:
    """A token kept across restarts, readable only by this account."""
    path = hub_dir / name
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _proxy_command() -> list[str]:
    for cand in (
        Path(sys.prefix) / "node_modules" / ".bin" / "configurable-http-proxy",
        shutil.which("configurable-http-proxy"),
    ):
        if cand and Path(cand).exists():
            return [str(cand)]
    return ["configurable-http-proxy"]


service_port = int(os.environ.get("KQI_SERVICE_PORT", "10101"))
service_token = _secret("kqi-service-token")

c.JupyterHub.ip = "127.0.0.1"  # only this machine; put a TLS proxy in front to share it
c.JupyterHub.db_url = f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(hub_dir / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = False
c.ConfigurableHTTPProxy.command = _proxy_command()
c.ConfigurableHTTPProxy.pid_file = str(hub_dir / "proxy.pid")

c.JupyterHub.authenticator_class = "hub_ext.auth.KqiAuthenticator"
c.Authenticator.admin_users = {os.environ.get("KQI_ADMIN_USER", "admin")}
c.KqiAuthenticator.first_admin = os.environ.get("KQI_ADMIN_USER", "admin")
c.Authenticator.allow_all = True  # NativeAuthenticator itself only lets approved users in

c.JupyterHub.spawner_class = "hub_ext.spawner.KqiLocalSpawner"
c.Spawner.cmd = [str(bin_dir / "jupyterhub-singleuser")]
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 90
c.KqiLocalSpawner.data_root = str(data_root)
c.KqiLocalSpawner.kqi_service_url = f"http://127.0.0.1:{service_port}/services/kqi/"
c.KqiLocalSpawner.kqi_api_token = service_token

c.JupyterHub.services = [
    {
        "name": "kqi",
        "display": True,
        "url": f"http://127.0.0.1:{service_port}",
        "api_token": service_token,
        "oauth_no_confirm": True,
        "command": [sys.executable, "-m", "hub_ext.service", "--data-root", str(data_root)],
        "environment": {
            "KQI_DATA_ROOT": str(data_root),
            # kqi-hub ends the service a killed hub left running (hub_ext/leftovers.py)
            "KQI_PID_FILE": str(service_pid_file(data_root, "kqi")),
        },
    }
]


def _culler_settings(_spawner) -> str:
    """The culler's options from the hub's whole config, read when the hub starts it:
    ``c.KqiCuller.*`` here or in kqi_hub_config.py, and ``kqi-hub --KqiCuller.x=...``."""
    from jupyterhub.app import JupyterHub

    from culler.app import hub_settings

    return json.dumps(hub_settings(JupyterHub.instance().config))


def _proxy_url(_spawner) -> str:
    """Where the culler reaches user servers: this hub's proxy (its port may come from the
    command line, so it is read at service start)."""
    from jupyterhub.app import JupyterHub

    from culler.app import proxy_origin

    return proxy_origin(JupyterHub.instance().bind_url)


def _accounts_settings(_spawner) -> str:
    """The hub's ``c.KqiAccounts`` for the kqi service (one place: the hub's config)."""
    from jupyterhub.app import JupyterHub

    from hub_ext.accounts import hub_settings

    return hub_settings(JupyterHub.instance().config)


def _isolation_setting(_spawner) -> str:
    """The hub's c.KqiLocalSpawner.isolation: the jobs' isolation follows the servers'."""
    from jupyterhub.app import JupyterHub

    from hub_ext.spawner.local import KqiLocalSpawner

    return KqiLocalSpawner.configured(JupyterHub.instance().config, "isolation")


c.JupyterHub.services[0]["environment"]["KQI_ACCOUNTS"] = _accounts_settings
c.JupyterHub.services[0]["environment"]["KQI_ISOLATION_SETTING"] = _isolation_setting
# the admin dashboard of the kqi service probes running servers through the proxy too
c.JupyterHub.services[0]["environment"]["KQI_PROXY_URL"] = _proxy_url

c.JupyterHub.services.append(
    {
        "name": "kqi-culler",
        "command": [sys.executable, "-m", "culler"],
        "environment": {
            "KQI_CULLER_CONFIG": _culler_settings,
            "KQI_PROXY_URL": _proxy_url,
            "KQI_SERVICE_URL": f"http://127.0.0.1:{service_port}/services/kqi/",
            "KQI_PID_FILE": str(service_pid_file(data_root, "kqi-culler")),
        },
    }
)
c.JupyterHub.load_roles = [
    {
        "name": "kqi-culler",
        "description": "the culler lists running servers, probes their activity, stops them, "
        "and records why with the kqi service",
        "scopes": [
            "list:users",
            "read:servers",
            "access:servers",
            "delete:servers",
            "access:services!service=kqi",
        ],
        "services": ["kqi-culler"],
    },
    {
        "name": "kqi-service",
        "description": "the kqi service reads users and their groups to decide who may bind "
        "what, and probes running servers' activity for the admin dashboard",
        "scopes": ["read:users", "read:groups", "list:users", "read:servers", "access:servers"],
        "services": ["kqi"],
    },
    {"name": "user", "scopes": ["self", "access:services!service=kqi"]},
]

# Local changes: run with this same ``c``, so they can also append to services and roles.
local = Path("kqi_hub_config.py").absolute()
if local.exists():
    exec(compile(local.read_text(), str(local), "exec"), {"c": c, "get_config": lambda: c})
