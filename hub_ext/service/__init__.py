"""The ``kqi`` hub service: datasets catalog, profiles, layout authority, jobs database."""
