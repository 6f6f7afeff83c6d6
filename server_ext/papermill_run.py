"""``kqi-papermill``: papermill, with the notebook's kernel started while papermill loads.

papermill takes most of a second to import and only then starts the kernel, which takes most
of a second more: a small notebook job spent its life waiting on the two in a row. This starts
the kernel first (jupyter_client alone imports quickly), then runs papermill's own command
line with the same arguments, handing it the started kernel, and shuts the kernel down at the
end. Parameters, logs, the output notebook and the exit status are papermill's. Anything this
does not recognise (other options, piped input, no kernel name) runs plain papermill.
"""

from __future__ import annotations

import json
import sys
from typing import Any

#: the options the job submission writes, and how many values each takes
_KNOWN = {
    "-p": 2,
    "--parameters": 2,
    "-r": 2,
    "--parameters_raw": 2,
    "-y": 1,
    "--parameters_yaml": 1,
    "-k": 1,
    "--kernel": 1,
    "-l": 1,
    "--language": 1,
}


def kernel_name(argv: list[str]) -> str | None:
    """The kernel papermill will use, when the arguments make it plain; else None."""
    if not argv or argv[0].startswith("-"):
        return None
    positional, kernel, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            n = _KNOWN.get(arg)
            if n is None or i + n >= len(argv):
                return None  # an option papermill has and we do not model: leave it all to it
            if arg in ("-k", "--kernel"):
                kernel = argv[i + 1]
            i += n + 1
        else:
            positional.append(arg)
            i += 1
    if len(positional) != 2:
        return None
    if kernel:
        return kernel
    try:
        with open(positional[0], encoding="utf-8") as f:
            name = json.load(f)["metadata"]["kernelspec"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name else None


def start_kernel(name: str) -> Any:
    """A started kernel (jupyter_client AsyncKernelManager), or None: papermill then starts
    it itself, and reports any failure in its own words."""
    try:
        from jupyter_client.manager import AsyncKernelManager
        from jupyter_core.utils import run_sync

        class StartedKernel(AsyncKernelManager):
            """Keeps the clients papermill makes, to close them before the kernel goes."""

            def client(self, **kwargs: Any) -> Any:
                kc = super().client(**kwargs)
                self.kqi_clients.append(kc)
                return kc

        km = StartedKernel(kernel_name=name)
        km.kqi_clients = []
        run_sync(km.start_kernel)()  # the loop nbclient's run_sync reuses in this thread
        return km
    except Exception:
        return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = kernel_name(argv)
    km = start_kernel(name) if name else None
    from papermill import cli  # the slow import, while the kernel starts

    if km is not None:
        plain = cli.execute_notebook

        def with_kernel(*args: Any, **kwargs: Any) -> Any:
            return plain(*args, km=km, **kwargs)

        cli.execute_notebook = with_kernel
    try:
        cli.papermill.main(argv, prog_name="papermill")  # exits with papermill's status
    finally:
        if km is not None:
            from jupyter_core.utils import run_sync

            try:
                run_sync(stop_kernel)(km)
            except Exception:
                pass


async def stop_kernel(km: Any, wait: float = 5.0) -> None:
    """Ask the kernel to end (its atexit handlers run), watch it go at a finer grain than
    jupyter_client's 0.1 s, then clean up; a kernel that hangs is killed after ``wait``."""
    import asyncio
    import time

    for kc in km.kqi_clients:
        kc.stop_channels()
    await km.request_shutdown()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and await km.is_alive():
        await asyncio.sleep(0.01)
    await km.shutdown_kernel(now=True)  # ended already: only the connection file is left


if __name__ == "__main__":
    main()
