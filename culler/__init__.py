"""kqi culler: cull rules and the kqi-culler hub service (see DESIGN.md, "Cull rules")."""
