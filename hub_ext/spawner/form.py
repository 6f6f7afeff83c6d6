"""The spawn form: a pure function from what the service says the user may choose to HTML.

It is inserted into JupyterHub's own spawn page, so it uses that page's Bootstrap classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from html import escape
from typing import Any

from culler.rules import parse_time

from ..quota import Usage, size_text, usage_line


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _profile_line(p: Mapping[str, Any]) -> str:
    gpu = f", {p['gpu']} GPU" if p.get("gpu") else ""
    return f"{p['cpu']:g} CPU, {_size(p['memory'])} memory, {_size(p['storage'])} workspace{gpu}"


def render_form(
    data: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
    limits_note: str = "",
    for_user: str = "",
    now: datetime | None = None,
) -> str:
    """HTML for the options form. ``data`` is the service's form data for the user being
    spawned; ``previous`` pre-fills the last options; ``limits_note`` says what this spawner
    cannot enforce; ``now`` is the time the workspace's age is told against."""
    prev = dict(previous or {})
    workspace = _workspace(data.get("workspace"))
    e = escape
    out: list[str] = ['<div class="kqi-form">']
    if data.get("last_cull"):
        out.append(last_cull_note(data["last_cull"]))
    if for_user:
        out.append(f'<p class="text-muted">Options for <strong>{e(for_user)}</strong>.</p>')

    out.append('<fieldset class="mb-3"><legend class="fs-5">Resources</legend>')
    chosen = prev.get("profile") or next(
        (p["name"] for p in data["profiles"] if p.get("default")), data["profiles"][0]["name"]
    )
    for p in data["profiles"]:
        pid = f"kqi-profile-{e(p['name'])}"
        checked = " checked" if p["name"] == chosen else ""
        desc = (
            f' <span class="text-muted">{e(p["description"])}</span>'
            if p.get("description")
            else ""
        )
        out.append(
            f'<div class="form-check"><input class="form-check-input" type="radio" name="profile"'
            f' id="{pid}" value="{e(p["name"])}"{checked}>'
            f'<label class="form-check-label" for="{pid}"><strong>{e(p["display_name"])}</strong>'
            f" ({_profile_line(p)}){desc}{_too_small(workspace, p)}</label></div>"
        )
    if workspace:
        shown = [p for p in data["profiles"] if p["name"] == chosen] or data["profiles"]
        quota = shown[0]["storage"]
        out.append(
            f'<div class="form-text kqi-workspace">Workspace: {usage_line(workspace, quota, now)}'
            "; a profile with less storage than that is refused.</div>"
        )
    if limits_note:
        out.append(f'<div class="form-text text-warning kqi-limits-note">{e(limits_note)}</div>')
    out.append("</fieldset>")

    out.append(
        f'<fieldset class="mb-3"><legend class="fs-5">Datasets</legend>'
        f'<div class="form-text">Mounted read-only at /kqi/input/&lt;name&gt; (link ~/input);'
        f" at most {data['max_datasets']}.</div>"
    )
    if not data["datasets"]:
        out.append('<p class="text-muted">No datasets you may read yet.</p>')
    picked = set(prev.get("datasets") or [])
    for d in data["datasets"]:
        did = f"kqi-ds-{e(d['name'])}"
        checked = " checked" if d["name"] in picked else ""
        desc = f" — {e(d['description'])}" if d.get("description") else ""
        out.append(
            f'<div class="form-check"><input class="form-check-input" type="checkbox"'
            f' name="datasets" id="{did}" value="{e(d["name"])}"{checked}>'
            f'<label class="form-check-label" for="{did}"><code>{e(d["name"])}</code>{desc}'
            f' <span class="text-muted">({d["files"]} files, {_size(d["size"])})</span>'
            "</label></div>"
        )
    out.append("</fieldset>")

    out.append('<fieldset class="mb-3"><legend class="fs-5">Earlier jobs</legend>')
    out.append(
        _job_select("parent", "Parent job (output read-only at /kqi/parent)", data["jobs"], prev)
    )
    inference_jobs = [j for j in data["jobs"] if j["purpose"] == "inference"]
    out.append(
        _job_select(
            "inference", "Inference job (output read-only at /kqi/inference)", inference_jobs, prev
        )
    )
    out.append("</fieldset>")

    git = prev.get("git") or {}
    out.append(
        '<fieldset class="mb-3"><legend class="fs-5">Git repository</legend>'
        '<div class="form-text">Cloned into /kqi/git (link ~/git) at every start.</div>'
        '<div class="row g-2"><div class="col-md-8">'
        '<label class="form-label" for="kqi-git-url">URL</label>'
        '<input class="form-control" id="kqi-git-url" name="git_url"'
        f' value="{e(git.get("url", ""))}" placeholder="https://example.org/team/repo.git">'
        '</div><div class="col-md-4">'
        '<label class="form-label" for="kqi-git-ref">Branch, tag or commit</label>'
        '<input class="form-control" id="kqi-git-ref" name="git_ref"'
        f' value="{e(git.get("ref", ""))}" placeholder="default branch"></div></div></fieldset>'
    )

    max_h = data.get("max_lifetime_hours")
    max_attr = f' max="{max_h:g}"' if max_h else ""
    max_txt = f" (at most {max_h:g} h)" if max_h else ""
    env_text = "\n".join(f"{k}={v}" for k, v in (prev.get("env") or {}).items())
    out.append(
        '<fieldset class="mb-3"><legend class="fs-5">Server</legend>'
        '<label class="form-label" for="kqi-lifetime">Lifetime in hours'
        f"{max_txt}; empty: until stopped or idle</label>"
        f'<input class="form-control" type="number" min="0.1" step="0.1"{max_attr}'
        ' id="kqi-lifetime"'
        f' name="lifetime_hours" value="{e(str(prev.get("lifetime_hours") or ""))}">'
        '<label class="form-label mt-2" for="kqi-startup">Startup command (runs in ~ before'
        " JupyterLab; output in ~/.kqi-startup.log)</label>"
        '<textarea class="form-control" id="kqi-startup" name="startup_command" rows="2">'
        f"{e(prev.get('startup_command') or '')}</textarea>"
        '<label class="form-label mt-2" for="kqi-env">Environment variables (NAME=value, one per'
        " line)</label>"
        f'<textarea class="form-control" id="kqi-env" name="env" rows="3">{e(env_text)}</textarea>'
        "</fieldset>"
    )
    out.append("</div>")
    return "\n".join(out)


def _workspace(data: Mapping[str, Any] | None) -> Usage | None:
    when = parse_time(data.get("measured_at")) if data else None
    return Usage(int(data["bytes"]), when) if data and when else None


def _too_small(workspace: Usage | None, profile: Mapping[str, Any]) -> str:
    if not workspace or workspace.bytes <= profile["storage"]:
        return ""
    return (
        f' <span class="text-danger kqi-too-small">(your workspace,'
        f" {size_text(workspace.bytes)}, is over its {size_text(profile['storage'])})</span>"
    )


def last_cull_note(event: Mapping[str, Any]) -> str:
    """Why the user's last server was stopped automatically, so nobody wonders where it went."""
    when = parse_time(event.get("culled_at"))
    when_text = when.strftime("%Y-%m-%d %H:%M UTC") if when else "an unknown time"
    server = f" ({escape(event['server'])})" if event.get("server") else ""
    reason = f" — {escape(event['reason'])}" if event.get("reason") else ""
    return (
        '<div class="alert alert-warning kqi-last-cull" role="status">'
        f"Your last server{server} was stopped automatically on {when_text} because: "
        f"<strong>{escape(str(event.get('rule', '')))}</strong>{reason}</div>"
    )


def _job_select(
    name: str, label: str, jobs: list[Mapping[str, Any]], prev: Mapping[str, Any]
) -> str:
    selected = prev.get(name)
    selected = {str(x) for x in (selected if isinstance(selected, list) else [selected]) if x}
    opts = ['<option value="">(none)</option>']
    for j in jobs:
        sel = " selected" if str(j["id"]) in selected else ""
        title = escape(j.get("name") or "")
        opts.append(
            f'<option value="{j["id"]}"{sel}>#{j["id"]} {title} ({escape(j["status"])})</option>'
        )
    return (
        f'<label class="form-label" for="kqi-{name}">{escape(label)}</label>'
        f'<select class="form-select mb-2" id="kqi-{name}" name="{name}">{"".join(opts)}</select>'
    )
