"""Long-running programs of the watch list, as a user starts them in a JupyterLab terminal."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: prctl(PR_SET_NAME) from Python, as torch >= 2.4 renames its main thread
RENAME_PT = (
    "import ctypes; ctypes.CDLL(None).prctl(15, b'pt_main_thread', 0, 0, 0); "
    "open('/proc/self/comm').read()"
)
_PT_HEX = b"pt_main_thread".hex()  # keeps the name out of the command line


@dataclass(frozen=True)
class Workload:
    name: str  # what the test calls it
    command: str  # typed into a terminal
    marker: str  # a word of its command line, to find it
    watch: str  # the watch-list entry it must match
    close_terminal: bool = False  # the terminal is closed after starting it


def write_files(home: Path, tag: str) -> None:
    """The scripts, notebook and LAMMPS input the workloads run, in the user's home."""
    home.mkdir(parents=True, exist_ok=True)
    for kind in ("fg", "nohup", "setsid", "envi"):
        (home / f"{kind}_{tag}.py").write_text("import time\ntime.sleep(600)\n")
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "sleep",
                "metadata": {},
                "outputs": [],
                "source": ["import time\n", "time.sleep(600)\n"],
            }
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (home / f"pm_{tag}.ipynb").write_text(json.dumps(nb))
    (home / f"in_{tag}.sleep").write_text("shell sleep 600\n")


def workloads(tag: str) -> list[Workload]:
    pt_code = (
        "import ctypes,time; "
        f"ctypes.CDLL(None).prctl(15, bytes.fromhex('{_PT_HEX}'), 0, 0, 0); time.sleep(600)"
    )
    return [
        Workload("terminal-python3", f"python3 fg_{tag}.py", f"fg_{tag}.py", "python"),
        Workload(
            "nohup-python3",
            f"nohup python3 nohup_{tag}.py >/dev/null 2>&1 &",
            f"nohup_{tag}.py",
            "python",
            close_terminal=True,
        ),
        Workload(
            "setsid-python3",
            f"setsid python3 setsid_{tag}.py </dev/null >/dev/null 2>&1 &",
            f"setsid_{tag}.py",
            "python",
            close_terminal=True,
        ),
        # env -i drops every variable, the server's marker too: found by the tree alone
        Workload(
            "envi-python3",
            f"nohup env -i python3 envi_{tag}.py >/dev/null 2>&1 &",
            f"envi_{tag}.py",
            "python",
            close_terminal=True,
        ),
        Workload(
            "papermill", f"papermill pm_{tag}.ipynb out_{tag}.ipynb", f"pm_{tag}.ipynb", "papermill"
        ),
        Workload("lmp", f"lmp -in in_{tag}.sleep -log none", f"in_{tag}.sleep", "lmp"),
        # argv[0] 'trainer' and the hex name: only the process name says pt_main_thread
        Workload(
            "pt_main_thread",
            f'(exec -a trainer-{tag} python3 -c "{pt_code}")',
            f"trainer-{tag}",
            "pt_main_thread",
        ),
    ]
