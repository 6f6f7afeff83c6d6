"""The ``kqi`` hub-managed service: a traitlets Application running a tornado server."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler
from jupyterhub.utils import url_path_join
from sqlalchemy.orm import Session
from tornado import web
from traitlets import Dict, Float, Integer, List, Type, Unicode, default
from traitlets.config import Application

from ..leftovers import forget_self, record_self, run_until_stopped
from ..options import DEFAULT_PROFILES, Profile
from . import culls, dashboard, handlers, jobs, usage
from .catalog import Catalog
from .db import make_session_factory, migrate
from .hubapi import HubClient
from .scheduler import Scheduler


class KqiService(Application):
    name = "kqi-service"
    description = "The kqi hub service: datasets, profiles, the layout authority, and jobs."

    aliases = {
        "data-root": "KqiService.data_root",
        "db-url": "KqiService.db_url",
        "config": "KqiService.config_file",
        "log-level": "Application.log_level",
    }

    config_file = Unicode("", help="Python config file to load (traitlets).").tag(config=True)
    data_root = Unicode(
        help="Data root holding datasets/ and users/ (env KQI_DATA_ROOT).",
    ).tag(config=True)

    @default("data_root")
    def _data_root(self) -> str:
        return os.environ.get("KQI_DATA_ROOT", os.path.abspath(".kqi-data"))

    db_url = Unicode(
        help="SQLAlchemy URL of the service database (default: sqlite in data root)."
    ).tag(config=True)

    @default("db_url")
    def _db_url(self) -> str:
        return "sqlite:///" + os.path.join(self.data_root, "kqi.sqlite")

    profiles = List(
        Dict(),
        default_value=DEFAULT_PROFILES,
        help="""Resource profiles: dicts with name, display_name, cpu, memory ('8G'),
        storage ('100G'), gpu, description, default (bool), extra (Kubernetes settings).""",
    ).tag(config=True)
    max_datasets = Integer(5, help="Most datasets one server or job may bind.").tag(config=True)
    max_lifetime_hours = Float(
        None, allow_none=True, help="Longest lifetime_hours a user may ask for (None: no maximum)."
    ).tag(config=True)
    git_schemes = List(
        Unicode(),
        default_value=["https", "http", "ssh", "git"],
        help="URL schemes allowed for the git repository option ('file' only for tests).",
    ).tag(config=True)
    runner_class = Type(
        "hub_ext.runners.LocalRunner",
        klass="hub_ext.runners.JobRunner",
        help="How jobs run: hub_ext.runners.LocalRunner (processes on this machine) or "
        "hub_ext.runners.kubernetes.KubernetesRunner (batch/v1 Jobs).",
    ).tag(config=True)
    max_running_jobs = Integer(4, help="Jobs running at once on the whole platform.").tag(
        config=True
    )
    max_running_jobs_per_user = Integer(2, help="Jobs one user may have running at once.").tag(
        config=True
    )
    max_archive_bytes = Integer(
        200 * 1024**2, help="Largest code archive, unpacked, in bytes (also the upload limit)."
    ).tag(config=True)
    max_job_seconds = Integer(
        None, allow_none=True, help="Longest timeout_seconds a job may ask for (None: no maximum)."
    ).tag(config=True)
    webhook_attempts = Integer(4, help="Tries of a job's notify_url before giving up.").tag(
        config=True
    )
    webhook_retry_delay = Float(2.0, help="Seconds before the first webhook retry (doubles).").tag(
        config=True
    )
    usage_interval = Float(
        600.0,
        help="""Seconds between measurements of each user's workspace (users/<user>/home and
        users/<user>/jobs, in a background thread at low priority). A spawn or job whose
        profile's storage is below the last measurement is refused; 0 turns measuring and that
        check off (e.g. where the storage enforces its own size, as on Kubernetes).""",
    ).tag(config=True)
    api_token = Unicode(help="This service's hub token (env JUPYTERHUB_API_TOKEN).").tag(
        config=True
    )

    @default("api_token")
    def _api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    service_prefix = Unicode(help="URL prefix (env JUPYTERHUB_SERVICE_PREFIX).").tag(config=True)

    @default("service_prefix")
    def _prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/kqi/")

    service_url = Unicode(help="Where to listen (env JUPYTERHUB_SERVICE_URL).").tag(config=True)

    @default("service_url")
    def _service_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    def initialize(self, argv=None) -> None:
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
            self.update_config(self.cli_config)  # the command line wins over the file
        if not self.api_token:
            self.exit("kqi service: no JUPYTERHUB_API_TOKEN; run it as a JupyterHub service")
        self.profile_map = {p.name: p for p in (Profile.from_config(d) for d in self.profiles)}
        if not self.profile_map:
            self.exit("kqi service: at least one profile must be configured")
        root = Path(self.data_root)
        for sub in ("datasets", "users"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(root / "datasets")
        migrate(self.db_url)
        self.engine, self._sessions = make_session_factory(self.db_url)
        self.runner = self.runner_class(parent=self, data_root=self.data_root)
        self.scheduler = Scheduler(self, self.runner, self.log)
        self.usage = usage.UsageMonitor(self)
        self.hub = HubClient(
            os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api"), self.api_token
        )

    def session(self) -> Session:
        return self._sessions()

    def make_app(self) -> web.Application:
        p = self.service_prefix
        routes = [
            (p, dashboard.DashboardHandler),
            (url_path_join(p, "oauth_callback"), HubOAuthCallbackHandler),
            (url_path_join(p, "api/datasets"), handlers.DatasetsHandler),
            (url_path_join(p, "api/profiles"), handlers.ProfilesHandler),
            (url_path_join(p, "api/cull-events"), culls.CullEventsHandler),
            (url_path_join(p, "api/activity"), dashboard.ActivityHandler),
            (url_path_join(p, "api/usage"), usage.UsageHandler),
            (url_path_join(p, "api/jobs"), jobs.JobsHandler),
            (url_path_join(p, r"api/jobs/(\d+)"), jobs.JobHandler),
            (url_path_join(p, r"api/jobs/(\d+)/stop"), jobs.StopHandler),
            (url_path_join(p, r"api/jobs/(\d+)/continue"), jobs.ContinueHandler),
            (url_path_join(p, r"api/jobs/(\d+)/logs"), jobs.LogsHandler),
            (url_path_join(p, r"api/jobs/(\d+)/files"), jobs.FilesHandler),
            (url_path_join(p, r"api/jobs/(\d+)/files/(.+)"), jobs.FilesHandler),
            (url_path_join(p, "api/internal/form"), handlers.FormDataHandler),
            (url_path_join(p, "api/internal/plan"), handlers.PlanHandler),
        ]
        return web.Application(
            routes,
            kqi=self,
            hub_auth=HubOAuth(api_token=self.api_token, cache_max_age=60),
            cookie_secret=secrets.token_bytes(32),
            xsrf_cookies=False,  # HubOAuth checks XSRF itself for cookie-authenticated requests
            log_function=self._log_request,
        )

    def _log_request(self, handler: web.RequestHandler) -> None:
        status = handler.get_status()
        log = self.log.info if status < 500 else self.log.error
        log(
            "%d %s %.1fms",
            status,
            handler._request_summary(),
            1000 * handler.request.request_time(),
        )

    async def serve(self) -> None:
        url = urlsplit(self.service_url)
        server = self.make_app().listen(
            url.port or 80,
            url.hostname or "127.0.0.1",
            xheaders=True,
            max_body_size=self.max_archive_bytes + 16 * 1024**2,
        )
        pid_file = record_self()  # only once listening: the port is ours
        self.log.info(
            "kqi service on %s%s, data root %s",
            self.service_url,
            self.service_prefix,
            self.data_root,
        )
        try:
            sig = await run_until_stopped(asyncio.gather(self.scheduler.run(), self.usage.run()))
            self.log.info("kqi service stopped (%s); running jobs keep running", sig and sig.name)
        finally:
            self.usage.close()
            server.stop()
            forget_self(pid_file)

    def start(self) -> None:
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:  # a SIGINT before the handlers were in place
            self.log.info("kqi service stopped")


def main() -> None:
    KqiService.launch_instance()


if __name__ == "__main__":
    main()
