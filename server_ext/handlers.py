"""Routes the kqi server extension adds under the server's base URL."""

from __future__ import annotations

import json

from jupyter_server.base.handlers import APIHandler
from tornado import web


class LayoutHandler(APIHandler):
    """GET api/kqi/layout: what is bound where, and which home links were made or refused."""

    @web.authenticated
    def get(self) -> None:
        self.finish(json.dumps(self.settings["kqi_layout_state"]()))
