"""The JupyterLab extension in a real browser: headless chromium (Playwright) on the real hub and
JupyterLab. A user logs in, opens a notebook, submits it as a job, follows it in the Jobs sidebar,
continues it, stops a long job, and sees the auto-stop countdown and its warning.

The steps share one browser tab on one platform (module scope) and run in file order."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect

from hub_ext.service.scheduler import FINISHED

from .platform import Platform, private_platform
from .pw import login, shot

USER = "admin"  # the platform's first admin, whose password the platform writes to a file
IDLE = 150  # seconds: the culler's idle threshold on this platform
CONFIG = f"""
c.KqiCuller.idle_timeout = {IDLE}
c.KqiCuller.every = 2
"""
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "c1",
            "metadata": {},
            "outputs": [],
            "source": [
                "import os, pathlib\n",
                "out = pathlib.Path(os.environ['KQI_ROOT']) / 'output'\n",
                "(out / 'result.txt').write_text('42')\n",
                "print('hello from the notebook')",
            ],
        }
    ],
    "metadata": {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}
COUNTDOWN = re.compile(r"auto-stop in (?:(\d+) min )?(\d+) s: idle")
COUNTDOWN_JS = r"/^auto-stop in (?:\d+ min )?\d+ s: idle$/"
LONG_SCRIPT = "import time\nprint('long job started', flush=True)\ntime.sleep(600)\n"


@pytest.fixture(scope="module")
def lab_platform() -> Iterator[Platform]:
    with private_platform("lab", CONFIG) as p:
        p.add_dataset("mnist", {"train.csv": "a,b\n1,2\n"})
        p.add_dataset("qm9", {"molecules.xyz": "3\nwater\n"})
        r = p.spawn(USER, {"datasets": ["mnist", "qm9"]})
        assert r.status_code in (201, 202), r.text
        p.wait_ready(USER)
        home = p.home(USER)
        (home / "work").mkdir(exist_ok=True)
        (home / "work" / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
        (home / "work" / "long.py").write_text(LONG_SCRIPT)
        yield p


@pytest.fixture(scope="module")
def lab(chromium, lab_platform: Platform) -> Iterator[object]:
    """One logged-in tab with JupyterLab open."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    password = lab_platform.password_file.read_text().strip()
    login(page, lab_platform, USER, password)
    shot(page, "lab-01-logged-in")
    open_lab(page, f"{lab_platform.url}/user/{USER}/lab")
    yield page
    context.close()


@pytest.fixture(autouse=True)
def shot_on_failure(request, lab) -> Iterator[None]:
    """A failed step leaves a screenshot of what the browser showed."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        shot(lab, f"lab-FAILED-{request.node.name}")


def open_lab(page, url: str) -> None:
    """Load JupyterLab at ``url`` and return once it has finished starting.

    JupyterLab opens the file of a /lab/tree/<path> URL last, after it has put back the
    workspace's layout (which may hold that notebook already, shown at once): it then brings
    the file's tab to the front and focuses it, over whatever was opened meanwhile. A job
    submitted from the notebook in those first seconds had its view hidden behind the
    notebook again, and its buttons never became visible. The default file browser carries
    ``jp-mod-restoring`` until that is done (an empty main area gets its launcher in the same
    task)."""
    if page.url == url:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_selector(".jp-LabShell", timeout=60_000)
    page.locator("#filebrowser:not(.jp-mod-restoring)").wait_for(state="attached", timeout=60_000)


def job_row(page, job_id: int):
    return page.locator(f"#kqi-jobs li.kqi-job-row[data-job-id='{job_id}']")


def wait_status(page, job_id: int, status: str, timeout: float = 90) -> None:
    """The job's row in the Jobs sidebar, shown, says ``status`` (the sidebar refreshes
    itself while it is shown)."""
    row = job_row(page, job_id)
    expect(row).to_be_visible(timeout=30_000)
    expect(row.locator(".kqi-status")).to_have_text(status, timeout=timeout * 1000)


def current_job_view(page, job_id: int, status: str | None = None, timeout: float = 90):
    """The job's view once it is what the user looks at: the current tab of the main area
    (the one with the keyboard focus last), shown, not behind another tab; with ``status``,
    once the view itself says so (not only the sidebar: the view asks on its own), and for a
    finished job with Stop disabled and the log read to its end. Returns its locator."""
    try:
        page.wait_for_function(
            JOB_VIEW_READY, arg=[job_id, status, status in FINISHED], timeout=timeout * 1000
        )
    except PlaywrightTimeoutError as e:
        seen = page.evaluate(JOB_VIEW_STATE, job_id)
        raise AssertionError(f"job view {job_id} not current with status {status}: {seen}") from e
    return page.locator(f"#kqi-job-view-{job_id}")


JOB_VIEW_READY = """([id, status, finished]) => {
    const view = document.getElementById(`kqi-job-view-${id}`);
    const tab = document.querySelector(
        `.lm-DockPanel-tabBar .lm-TabBar-tab[data-id="kqi-job-view-${id}"]`);
    if (!view || !tab || !view.checkVisibility()) return false;
    if (!tab.classList.contains('lm-mod-current')) return false;  // in front in its tab bar
    if (!tab.classList.contains('jp-mod-current')) return false;  // the shell's current one
    if (!status) return true;
    if (!view.querySelector(`.kqi-job-facts dd.kqi-status-${status}`)) return false;
    return !finished || (view.querySelector('button.kqi-stop').disabled &&
        view.querySelector('.kqi-log').dataset.complete === 'true');
}"""
JOB_VIEW_STATE = """(id) => {
    const view = document.getElementById(`kqi-job-view-${id}`);
    const current = document.querySelector('.lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current');
    return {
        view: !!view, shown: !!view && view.checkVisibility(),
        front_tab: current && current.textContent,
        shell_current: document.querySelector('.lm-TabBar-tab.jp-mod-current')?.textContent,
        status: view?.querySelector('.kqi-job-facts dd.kqi-status')?.textContent,
        log_complete: view?.querySelector('.kqi-log')?.dataset.complete,
        focus: document.activeElement?.className,
    };
}"""


def show_sidebar(page, panel_id: str) -> None:
    """Bring a left sidebar panel forward (its tab toggles it: clicked only while hidden)."""
    panel = page.locator(f"#{panel_id}")
    if not panel.is_visible():
        page.locator(f".jp-SideBar li[data-id='{panel_id}']").click()
    panel.wait_for()


def show_jobs(page) -> None:
    show_sidebar(page, "kqi-jobs")
    page.wait_for_selector("#kqi-jobs .kqi-job-list")


def expect_crumbs(page, path: str) -> None:
    """The file browser shows the folder ``path`` (its breadcrumbs, spaces aside)."""
    parts = r"\s*/\s*".join(re.escape(p) for p in path.strip("/").split("/"))
    crumbs = page.locator(".jp-FileBrowser .jp-BreadCrumbs")
    expect(crumbs).to_have_text(re.compile(rf"/\s*{parts}\s*/"), timeout=30_000)


def test_lab_shows_mounted_inputs_and_forecast(lab, lab_platform: Platform) -> None:
    mounted = lab.locator(".kqi-mounted")
    # both are filled in by requests of their own after the page has loaded
    expect(mounted).to_have_text("mounted: 2 datasets", timeout=30_000)
    expect(lab.locator(".kqi-autostop")).to_have_text(COUNTDOWN, timeout=30_000)
    # the workspace size the service measured, against the server's profile (standard)
    usage = lab.locator(".kqi-usage")
    expect(usage).to_have_text(re.compile(r"^workspace: [\d.]+ (B|KiB|MiB) of 100 GiB$"))
    expect(usage).to_have_attribute("title", re.compile(r"of 100 GiB \(measured \d+ s ago\)"))
    mounted.click()
    dialog = lab.locator(".jp-Dialog")
    expect(dialog).to_contain_text("dataset mnist: ~/input/mnist")
    expect(dialog).to_contain_text("dataset qm9: ~/input/qm9")
    shot(lab, "lab-02-mounted-inputs")
    dialog.locator("button.jp-mod-accept").click()
    dialog.wait_for(state="detached")
    # the datasets are in the file browser under ~/input
    open_lab(lab, f"{lab_platform.url}/user/{USER}/lab/tree/input")
    show_sidebar(lab, "filebrowser")
    lab.wait_for_selector(".jp-DirListing-item[title^='Name: mnist']")
    assert lab.locator(".jp-DirListing-item[title^='Name: qm9']").count() == 1
    shot(lab, "lab-03-input-folder")


def test_submit_notebook_as_job(lab, lab_platform: Platform) -> None:
    open_lab(lab, f"{lab_platform.url}/user/{USER}/lab/tree/work/analysis.ipynb")
    lab.wait_for_selector(".jp-NotebookPanel .cm-content")
    # an unsaved edit: submitting saves it first, so the job prints it
    lab.locator(".jp-NotebookPanel .cm-content").first.click()
    lab.keyboard.press("Control+End")
    lab.keyboard.type("\nprint('edited before submitting')")
    lab.wait_for_selector(".lm-TabBar-tab.jp-mod-dirty")
    lab.locator(".jp-NotebookPanel-toolbar").get_by_text("Submit as job…").click()
    dialog = lab.locator(".jp-Dialog")
    dialog.locator("input[name=name]").wait_for()
    assert dialog.locator("select[name=mode]").input_value() == "notebook-script"
    assert dialog.locator("input[name=command]").input_value() == (
        "ipython --colors=NoColor analysis.py"
    )
    dialog.locator("input[name=name]").fill("analysis-run")
    dialog.locator("input[type=checkbox][value=mnist]").check()
    dialog.locator("textarea[name=env]").fill("SEED=7")
    shot(lab, "lab-04-submit-dialog")
    dialog.locator("button.jp-mod-accept").click()

    # the submission shows the Jobs sidebar and opens the job in front
    wait_status(lab, 1, "succeeded")
    view = current_job_view(lab, 1, "succeeded")
    log = view.locator(".kqi-log").inner_text()
    assert "hello from the notebook" in log and "edited before submitting" in log, log
    facts = view.locator(".kqi-job-facts").inner_text()
    assert "succeeded (exit 0)" in facts and "mnist" in facts, facts
    assert job_row(lab, 1).locator(".kqi-job-name").inner_text() == "analysis-run"
    shot(lab, "lab-05-job-succeeded")

    view.get_by_text("Open output folder").click()
    lab.wait_for_selector(".jp-DirListing-item[title^='Name: result.txt']")
    expect_crumbs(lab, "jobs/1/output")
    shot(lab, "lab-06-output-folder")


def test_continue_job(lab) -> None:
    show_jobs(lab)
    job_row(lab, 1).click()
    view = current_job_view(lab, 1)
    view.get_by_text("Continue…").click()
    dialog = lab.locator(".jp-Dialog")
    assert dialog.locator("input[name=command]").input_value() == (
        "ipython --colors=NoColor analysis.py"
    )
    dialog.locator("input[name=copy_output]").check()
    shot(lab, "lab-07-continue-dialog")
    dialog.locator("button.jp-mod-accept").click()
    wait_status(lab, 2, "succeeded")
    new = current_job_view(lab, 2, "succeeded")
    assert "hello from the notebook" in new.locator(".kqi-log").inner_text()
    assert "Continued from#1" in new.locator(".kqi-job-facts").inner_text().replace("\n", "")
    shot(lab, "lab-08-continued-job")


def test_stop_long_job(lab, lab_platform: Platform) -> None:
    open_lab(lab, f"{lab_platform.url}/user/{USER}/lab/tree/work")
    show_sidebar(lab, "filebrowser")
    item = lab.locator(".jp-DirListing-item[title^='Name: long.py']")
    item.click(button="right")
    lab.locator(".lm-Menu-item").get_by_text("Submit as job…").click()
    dialog = lab.locator(".jp-Dialog")
    assert dialog.locator("select[name=mode]").input_value() == "script"
    assert dialog.locator("input[name=command]").input_value() == "python long.py"
    dialog.locator("button.jp-mod-accept").click()
    wait_status(lab, 3, "running")
    view = current_job_view(lab, 3, "running")
    expect(view.locator(".kqi-log")).to_contain_text("long job started", timeout=60_000)
    shot(lab, "lab-09-long-job-running")
    view.locator("button.kqi-stop").click()
    wait_status(lab, 3, "stopped", timeout=60)
    current_job_view(lab, 3, "stopped")
    shot(lab, "lab-10-long-job-stopped")


def test_submit_papermill_with_parameters(lab, lab_platform: Platform) -> None:
    open_lab(lab, f"{lab_platform.url}/user/{USER}/lab/tree/work/analysis.ipynb")
    lab.wait_for_selector(".jp-NotebookPanel .cm-content", timeout=60_000)
    lab.locator(".jp-NotebookPanel-toolbar").get_by_text("Submit as job…").click()
    dialog = lab.locator(".jp-Dialog")
    dialog.locator("select[name=mode]").select_option("papermill")
    command = dialog.locator("input[name=command]").input_value()
    assert command.startswith("kqi-papermill analysis.ipynb "), command
    dialog.locator("textarea[name=parameters]").fill("epochs=3\nlabel=first try")
    dialog.locator("select[name=parent]").select_option("1")
    shot(lab, "lab-11-papermill-dialog")
    dialog.locator("button.jp-mod-accept").click()
    current_job_view(lab, 4)
    # the keyboard follows: typing now goes to the job, not to the notebook behind it
    lab.wait_for_function("!!document.activeElement.closest('#kqi-job-view-4')", timeout=10_000)
    wait_status(lab, 4, "succeeded", timeout=120)
    view = current_job_view(lab, 4, "succeeded")
    facts = view.locator(".kqi-job-facts").inner_text()
    assert "-p epochs 3" in facts and "-r label 'first try'" in facts, facts
    view.get_by_text("Open output folder").click()
    lab.wait_for_selector(".jp-DirListing-item[title^='Name: analysis.ipynb']", timeout=60_000)
    expect_crumbs(lab, "jobs/4/output")
    shot(lab, "lab-12-papermill-output")


def test_submit_refusal_is_shown(lab, lab_platform: Platform) -> None:
    open_lab(lab, f"{lab_platform.url}/user/{USER}/lab/tree/work/long.py")
    lab.wait_for_selector(".jp-FileEditor")
    lab.locator(".jp-FileEditor").click()
    lab.keyboard.press("Control+Shift+C")
    lab.locator(".lm-CommandPalette-input").fill("Submit as job")
    lab.locator(".lm-CommandPalette-item").get_by_text("Submit as job…").first.click()
    dialog = lab.locator(".jp-Dialog")
    dialog.locator("input[name=include]").fill("../../outside")
    dialog.locator("button.jp-mod-accept").click()
    error = lab.locator(".jp-Dialog .kqi-error-message")
    error.wait_for()
    assert lab.locator(".jp-Dialog-header").inner_text() == "The job was not submitted"
    assert "include pattern must be relative" in error.inner_text()
    shot(lab, "lab-13-submit-refused")
    lab.locator(".jp-Dialog button.jp-mod-accept").click()
    error.wait_for(state="detached")


def test_auto_stop_countdown_and_warning(lab, lab_platform: Platform) -> None:
    item = lab.locator(".kqi-autostop")
    expect(item).to_have_text(COUNTDOWN, timeout=30_000)
    first = item.inner_text()
    m = COUNTDOWN.fullmatch(first)
    assert m and 0 < int(m.group(1) or 0) * 60 + int(m.group(2)) <= IDLE, first
    # the idle stop is at most 150 s away (polls of this visible tab keep the server in use);
    # the warning comes that close before (default 10 min; here 5) with the reason, and the
    # forecast is polled every 2 s: settings of the extension, as a user would change them
    r = lab_platform.server(
        USER,
        "lab/api/settings/kqi-hub-labextension:plugin",
        method="PUT",
        json={"raw": json.dumps({"warnMinutes": 5, "activitySeconds": 2})},
    )
    assert r.status_code == 204, r.text
    open_lab(lab, lab.url)
    toast = lab.locator(".Toastify__toast").filter(has_text="stops automatically")
    toast.wait_for(timeout=30_000)
    text = toast.inner_text()
    assert "idle (no browser access, no busy kernel or watched program)" in text, text
    # the countdown moves (a kernel busy for a moment forecasts the next rule, no-access,
    # meanwhile: idle needs every kernel idle)
    expect(item).to_have_text(COUNTDOWN, timeout=30_000)
    seen = item.inner_text()
    lab.wait_for_function(
        f"""(seen) => {{
            const text = document.querySelector('.kqi-autostop')?.textContent || '';
            return {COUNTDOWN_JS}.test(text) && text !== seen;
        }}""",
        arg=seen,
        timeout=30_000,
    )
    assert "kqi-mod-soon" in (item.get_attribute("class") or "")
    shot(lab, "lab-14-auto-stop-warning")
    item.click()
    details = lab.locator(".jp-Dialog").inner_text()
    assert "Last browser access" in details and "Rule: idle" in details
    shot(lab, "lab-15-auto-stop-details")
    lab.locator(".jp-Dialog button.jp-mod-accept").click()
