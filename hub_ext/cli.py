"""``kqi-hub``: start the embedded platform (JupyterHub + proxy + kqi service) on this machine.

Arguments after ``kqi-hub`` go to JupyterHub, e.g. ``kqi-hub --port 8080``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HELP = """kqi-hub: start the kqi platform on this machine (JupyterHub on http://127.0.0.1:8000).

Usage: kqi-hub [JUPYTERHUB OPTIONS]    e.g. kqi-hub --port 8080

Environment:
  KQI_DATA_ROOT     data root (default ./.kqi-data): datasets/, users/, hub state
  KQI_SERVICE_PORT  port of the kqi service on 127.0.0.1 (default 10101)
  KQI_ADMIN_USER    the admin account (default admin); its first password is printed once

A kqi_hub_config.py in the current folder is loaded after the built-in config.
JupyterHub's own options: kqi-hub --help-all
"""


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(HELP)
        return
    data_root = Path(os.environ.get("KQI_DATA_ROOT", ".kqi-data")).absolute()
    if Path(sys.prefix).absolute().is_relative_to(data_root):
        # servers see the data root hidden (bubblewrap): they could not find this Python
        sys.exit(f"kqi-hub: the data root {data_root} must not contain this Python ({sys.prefix})")
    os.environ["KQI_DATA_ROOT"] = str(data_root)
    (data_root / "datasets").mkdir(parents=True, exist_ok=True)
    config = Path(__file__).with_name("embedded_config.py")
    from jupyterhub.app import JupyterHub

    JupyterHub.launch_instance(["-f", str(config), *argv])


if __name__ == "__main__":
    main()
