"""``kqi``: the platform from a notebook terminal: jobs (submit, follow, stop, continue),
datasets, and what is mounted under $KQI_ROOT.

It talks to the kqi service directly with the server's token (as the user), and builds job
submissions with the same code as the server's ``api/kqi/submit``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Any

from culler.rules import human

from . import cli_usage
from .cli_format import duration, human_size, local_time, table
from .client import ServiceClient, ServiceError
from .submission import MODES, SubmissionError, build_submission, max_bytes_from_env

OK, FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
EXIT_CODES = """exit codes:
  0  done (for logs -f / --follow: the job succeeded)
  1  the job failed, was stopped or lost, or the request was refused (bad file, unknown
     dataset, not your job, ...)
  2  usage error (bad arguments)
  3  the kqi service could not be reached or failed
"""
FINAL = ("succeeded", "failed", "stopped", "lost")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _param_value(text: str) -> Any:
    """A papermill parameter from the command line: JSON if it parses (numbers, true/false,
    lists, "quoted text"), Python's True/False/None, else the text itself."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    try:
        return json.loads(text)
    except ValueError:
        return text


def _command(words: list[str]) -> str | None:
    """``-- python x.py --lr 1`` → a quoted shell command; a single word is taken as a shell
    string (``-- 'python a.py && python b.py'``)."""
    if not words:
        return None
    if len(words) == 1:
        return words[0]
    import shlex

    return shlex.join(words)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, sort_keys=True))


def _job_line(job: dict[str, Any]) -> str:
    line = f"job {job['id']} ({job.get('name') or '-'}): {job['status']}"
    if job.get("exit_code") is not None and job["status"] in FINAL:
        line += f", exit code {job['exit_code']}"
    if job.get("message") and job["message"] != f"exit code {job.get('exit_code')}":
        line += f" — {job['message']}"
    return line


def _outcome(job: dict[str, Any]) -> int:
    return OK if job["status"] == "succeeded" else FAILED


# -- commands -----------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace, client: ServiceClient) -> int:
    path = os.path.abspath(args.file)
    parent: int | list[int] | None = None
    if args.parent:
        parent = args.parent[0] if len(args.parent) == 1 else args.parent
    spec = {
        "name": args.name,
        "profile": args.profile,
        "datasets": args.dataset or None,
        "parent": parent,
        "purpose": args.purpose,
        "env": dict(args.env) if args.env else None,
        "timeout_seconds": args.timeout,
        "notify_url": args.notify_url,
    }
    spec, archive = build_submission(
        os.path.dirname(path),
        os.path.basename(path),
        args.mode,
        command=_command(args.command_words),
        include=args.include or None,
        parameters={k: _param_value(v) for k, v in args.param} if args.param else None,
        spec=spec,
        max_bytes=max_bytes_from_env(),
    )
    job = client.submit(spec, archive)
    return _report_new(job, args, client, f"submitted ({human_size(len(archive))} of code)")


def _report_new(job: dict[str, Any], args: argparse.Namespace, client: ServiceClient, what: str):
    if not args.follow:
        if args.json:
            _print_json(job)
        else:
            print(f"{_job_line(job)} — {what}")
            print(f"  command: {job.get('command', '')}")
            print(f"  follow its log: kqi logs -f {job['id']}")
        return OK
    if not args.json:  # stdout is the job's log alone
        msg = f"{_job_line(job)} — {what}; following its log (Ctrl-C stops following)"
        print(msg, file=sys.stderr, flush=True)
    return follow(client, job["id"], args.json)


def follow(client: ServiceClient, job_id: int, as_json: bool) -> int:
    """Print the log as it comes until the job ends; exit with its outcome. If the stream
    breaks (service restart), reconnect and go on where it stopped."""
    out = sys.stderr.buffer if as_json else sys.stdout.buffer
    printed, failures = 0, 0
    try:
        while True:
            seen = 0
            try:
                for chunk in client.stream_logs(job_id, follow=True):
                    failures = 0
                    new = chunk[max(0, printed - seen) :]
                    seen += len(chunk)
                    if new:
                        out.write(new)
                        out.flush()
                        printed += len(new)
                job = client.call("GET", f"jobs/{job_id}")
            except ServiceError as e:
                if e.status != 0 or failures >= 30:
                    raise
                failures += 1
                time.sleep(2)
                continue
            if job["status"] in FINAL:
                break
            time.sleep(1)
    except KeyboardInterrupt:
        msg = f"kqi: stopped following; job {job_id} goes on (kqi stop {job_id} stops it)"
        print("\n" + msg, file=sys.stderr)
        return 130
    if as_json:
        _print_json(job)
    else:
        print(_job_line(job), file=sys.stderr)
    return _outcome(job)


def cmd_jobs(args: argparse.Namespace, client: ServiceClient) -> int:
    jobs = client.call("GET", "jobs", all="1" if args.all else None)
    if args.json:
        _print_json(jobs)
        return OK
    if not jobs:
        print("no jobs yet (kqi submit FILE makes one)")
        return OK
    head = ["ID", "NAME", "STATUS", "EXIT", "PURPOSE", "CREATED", "TIME"]
    if args.all:
        head.insert(1, "OWNER")
    rows = []
    for j in jobs:
        row = [
            str(j["id"]),
            j.get("name") or "",
            j["status"],
            "" if j.get("exit_code") is None else str(j["exit_code"]),
            j.get("purpose") or "",
            local_time(j.get("created_at")),
            duration(j.get("started_at"), j.get("finished_at")),
        ]
        if args.all:
            row.insert(1, j.get("owner", ""))
        rows.append(row)
    print(table(head, rows))
    return OK


def cmd_show(args: argparse.Namespace, client: ServiceClient) -> int:
    job = client.call("GET", f"jobs/{args.id}")
    if args.json:
        _print_json(job)
        return OK
    for key in (
        "id",
        "name",
        "owner",
        "status",
        "exit_code",
        "message",
        "command",
        "purpose",
        "profile",
        "datasets",
        "parents",
        "continued_from",
        "created_at",
        "started_at",
        "finished_at",
    ):
        value = job.get(key)
        if key.endswith("_at"):
            value = local_time(value)
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        print(f"{key + ':':16}{'' if value is None else value}")
    return OK


def cmd_logs(args: argparse.Namespace, client: ServiceClient) -> int:
    if args.follow:
        return follow(client, args.id, as_json=False)
    for chunk in client.stream_logs(args.id, follow=False):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return OK


def cmd_stop(args: argparse.Namespace, client: ServiceClient) -> int:
    job = client.call("POST", f"jobs/{args.id}/stop", {})
    if args.json:
        _print_json(job)
    else:
        print(_job_line(job))
    return OK


def cmd_continue(args: argparse.Namespace, client: ServiceClient) -> int:
    body: dict[str, Any] = {"copy_output": args.copy_output}
    command = _command(args.command_words)
    if command:
        body["command"] = command
    job = client.call("POST", f"jobs/{args.id}/continue", body)
    what = f"continues job {args.id}" + (" with its output copied" if args.copy_output else "")
    return _report_new(job, args, client, what)


def cmd_datasets(args: argparse.Namespace, client: ServiceClient) -> int:
    datasets = client.call("GET", "datasets")
    if args.json:
        _print_json(datasets)
        return OK
    if not datasets:
        print("no datasets you may read")
        return OK
    rows = [
        [
            d["name"],
            human_size(d.get("size")),
            str(d.get("files", "")),
            d.get("description") or "",
        ]
        for d in datasets
    ]
    print(table(["NAME", "SIZE", "FILES", "DESCRIPTION"], rows))
    print(f"\nin a job or notebook: $KQI_ROOT/input/<NAME>/ (KQI_ROOT={_kqi_root()})")
    return OK


def _kqi_root() -> str:
    return os.environ.get("KQI_ROOT", "/kqi")


def cmd_layout(args: argparse.Namespace) -> int:
    layout = json.loads(os.environ.get("KQI_LAYOUT") or "{}")
    root = os.environ.get("KQI_ROOT")
    if not root:
        print("kqi: not inside a kqi server or job (KQI_ROOT is not set)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"kqi_root": root, **layout}, indent=1))
        return 0
    print(f"KQI_ROOT={root}")
    for b in layout.get("bindings", []):
        mode = "ro" if b["read_only"] else "rw"
        print(f"  {os.path.join(root, b['target']):40} {mode}  {b['source'] or '(fresh folder)'}")
    return 0


def _until(at: str) -> str:
    when = datetime.fromisoformat(at.replace("Z", "+00:00"))
    seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds <= 0:
        return "now"
    return "in " + human(seconds)


def cmd_status(args: argparse.Namespace) -> int:
    """The auto-stop forecast of this server, from its own activity route."""
    base = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not base or not token:
        print("kqi: not inside a kqi notebook server", file=sys.stderr)
        return USAGE
    # this command is itself a python process: leave it (and its shell) out of the forecast
    ignore = f"ignore_pid={os.getpid()}"
    req = urllib.request.Request(base.rstrip("/") + f"/api/kqi/activity?{ignore}")
    req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            activity = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as e:
        print(f"kqi: cannot read this server's activity: {e}", file=sys.stderr)
        return UNREACHABLE
    if args.json:
        _print_json(activity)
        return OK
    forecast = activity.get("forecast") or {}
    if forecast.get("at"):
        print(f"auto-stop {_until(forecast['at'])}: {forecast.get('rule')} ({forecast['at']})")
    else:
        print("no auto-stop is due")
    print(f"last browser access: {activity.get('last_browser_access') or 'never'}")
    kernels = activity.get("kernels") or []
    busy = sum(1 for k in kernels if k.get("execution_state") == "busy")
    print(f"kernels: {len(kernels)} ({busy} busy)")
    for proc in activity.get("watched_processes") or []:
        cmdline = proc["cmdline"]
        if isinstance(cmdline, list):
            cmdline = " ".join(cmdline)
        print(f"keeps the server up: pid {proc['pid']} {proc['name']}: {cmdline[:60]}")
    last = activity.get("last_watched_process")
    if last and not activity.get("watched_processes"):
        print(f"last watched program: {last['name']}, seen {last['seen']} (idle counts from then)")
    print(cli_usage.status_line())
    return OK


# -- parser -------------------------------------------------------------------------------------
def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a job id is a number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a job id is a positive number, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kqi",
        description="kqi platform commands: batch jobs from your files, datasets, the /kqi "
        "layout, your workspace size",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str, usage: str | None = None):
        p = sub.add_parser(
            name,
            help=help,
            description=textwrap.fill(description, 88),
            epilog=EXIT_CODES,
            formatter_class=fmt,
            usage=usage,
        )
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
        return p

    p = add(
        "submit",
        "run a script or notebook as a batch job",
        "Send FILE's folder (or the --include files) as the job's code; the job runs in "
        "/kqi/code with FILE at the top, with the chosen datasets under /kqi/input/ and its "
        "output kept from /kqi/output/. Modes: script (python FILE.py), notebook-script (the "
        "notebook converted to FILE.py, run with ipython so %magics work), papermill (the "
        "executed notebook lands in /kqi/output/FILE.ipynb). After `--`, a COMMAND replaces "
        "the mode's (several words are quoted for you; one word is a shell string).",
        usage="kqi submit FILE [options] [-- COMMAND...]",
    )
    p.add_argument("file", metavar="FILE", help=".py or .ipynb file, relative to here")
    p.add_argument(
        "--mode", choices=MODES, help="default: script for .py, notebook-script for .ipynb"
    )
    p.add_argument("--dataset", action="append", metavar="NAME", help="bind a dataset (repeat)")
    p.add_argument(
        "--parent",
        action="append",
        type=_job_id,
        metavar="ID",
        help="a job whose output is mounted at /kqi/parent (repeat)",
    )
    p.add_argument("--profile", metavar="P", help="resource profile (see the spawn form)")
    p.add_argument("--purpose", choices=("training", "inference"), help="default: training")
    p.add_argument("--name", metavar="N", help="job name (default: the file name)")
    p.add_argument(
        "--env",
        action="append",
        type=_key_value,
        metavar="K=V",
        help="environment variable for the job (repeat)",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_key_value,
        metavar="K=V",
        help="papermill parameter; V is JSON if it parses, else text (repeat)",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="send only these files (globs relative to FILE's folder, ** for any "
        "depth; repeat); default: the whole folder without .git, __pycache__, "
        ".ipynb_checkpoints",
    )
    p.add_argument("--timeout", type=int, metavar="SECONDS", help="stop the job after this")
    p.add_argument("--notify-url", metavar="URL", help="POST the job here when it ends")
    p.add_argument(
        "-f", "--follow", action="store_true", help="follow the log and exit with the job's outcome"
    )
    p.set_defaults(func=cmd_submit)

    p = add("jobs", "list your jobs", "Your jobs, newest first.")
    p.add_argument("--all", action="store_true", help="everyone's jobs (admins)")
    p.set_defaults(func=cmd_jobs)

    p = add("show", "one job in detail", "One job: status, command, datasets, times.")
    p.add_argument("id", type=_job_id, metavar="ID")
    p.set_defaults(func=cmd_show)

    p = add("logs", "print a job's log", "The job's stdout and stderr so far.")
    p.add_argument("id", type=_job_id, metavar="ID")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="go on until the job ends; exit 0 if it succeeded, 1 if not",
    )
    p.set_defaults(func=cmd_logs)

    p = add("stop", "stop a job", "Stop a queued or running job (a finished one stays as is).")
    p.add_argument("id", type=_job_id, metavar="ID")
    p.set_defaults(func=cmd_stop)

    p = add(
        "continue",
        "new job that continues a finished one",
        "A new job with the same code and datasets; the previous output is read-only at "
        "/kqi/parent. --copy-output also pre-fills /kqi/output with it. The previous job is "
        "never modified. After `--`, a COMMAND replaces the previous command.",
        usage="kqi continue ID [--copy-output] [-f] [--json] [-- COMMAND...]",
    )
    p.add_argument("id", type=_job_id, metavar="ID")
    p.add_argument("--copy-output", action="store_true", help="start from a copy of its output")
    p.add_argument(
        "-f", "--follow", action="store_true", help="follow the log and exit with the job's outcome"
    )
    p.set_defaults(func=cmd_continue)

    p = add("datasets", "datasets you may use", "Datasets you may bind to jobs and notebooks.")
    p.set_defaults(func=cmd_datasets)

    p = add("layout", "what is mounted under $KQI_ROOT", "The /kqi layout of this server.")
    p.set_defaults(func=cmd_layout, local=True)

    p = add(
        "status",
        "when this server will be stopped automatically, and why",
        "The auto-stop forecast of this server (the rule that will stop it first and when), "
        "its last browser access, kernels, the processes that keep it running, and the size of "
        "your workspace against the profile's storage.",
    )
    p.set_defaults(func=cmd_status, local=True)

    cli_usage.add_parser(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words: list[str] = []
    if "--" in argv:  # everything after the first -- is the job's command
        i = argv.index("--")
        argv, words = argv[:i], argv[i + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if words and args.cmd not in ("submit", "continue"):
        parser.error(f"{args.cmd} takes no command after --")
    args.command_words = words
    if getattr(args, "local", False):
        return args.func(args)
    try:
        return args.func(args, ServiceClient())
    except SubmissionError as e:
        print(f"kqi: {e}", file=sys.stderr)
        return FAILED
    except ServiceError as e:
        print(f"kqi: {e.message}", file=sys.stderr)
        return FAILED if 400 <= e.status < 500 else UNREACHABLE
    except BrokenPipeError:  # e.g. kqi logs 3 | head
        return OK


if __name__ == "__main__":
    sys.exit(main())
