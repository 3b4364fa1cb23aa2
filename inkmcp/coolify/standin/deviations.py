"""Where real Coolify 4.3.11 answers outside its own published spec, and the stand-in does the same.

Why a list here and not a loosened spec: the stand-in must answer like the real server (a client written
against it must cope with what Coolify really sends), while `response_violations` must stay a sharp signal.
An answer that breaks the spec in exactly one of these documented ways is recorded in
`CoolifyStandin.deviations_seen` instead; anything else is a violation. Each entry cites the controller line at
coollabsio/coolify 379abb2 (and NOTES.md where it already says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class KnownDeviation:
    method: str
    path: str
    """Regex (fullmatch) on the API path without /api/v1."""
    status: int
    source: str
    problem: str = ".*"
    """Regex (search) on the problem text: only the problems this deviation explains are excused."""

    def matches(self, method: str, path: str, status: int, problem: str) -> bool:
        return (method == self.method and status == self.status and re.fullmatch(self.path, path) is not None
                and re.search(self.problem, problem) is not None)


KNOWN_DEVIATIONS: tuple[KnownDeviation, ...] = (
    KnownDeviation("POST", r"/databases/postgresql", 201,
                   "DatabasesController.php:1968 returns 201 {uuid, internal_db_url, external_db_url?}; the spec "
                   "documents only 200 without a schema (NOTES.md §b Databases, §h)"),
    KnownDeviation("POST", r"/databases/postgresql", 422,
                   "DatabasesController.php:1888-1893, :1918-1935: some 422s carry `errors` values as plain strings "
                   "({\"public_port\": \"The public port should be between 1024 and 65535.\"}); the spec's 422 "
                   "schema for this operation says arrays (NOTES.md §a)"),
    KnownDeviation("GET", r"/databases(/[^/]+)?", 200,
                   "DatabasesController.php:335 (and the list, :180-253) return database models as JSON objects; "
                   "the spec types the 200 body as a string (#10449, NOTES.md §h)"),
    KnownDeviation("GET", r"/deployments/applications/[^/]+", 200,
                   "DeployController.php:731 returns Application::deployments() = {count, deployments:[…]} "
                   "(Application.php:1118); the spec says an array of Application (NOTES.md §b, §h)"),
    KnownDeviation("GET", r"/applications(/[^/]+)?", 200,
                   "BuildPackTypes has no `dockerimage`, but create_application stores build_pack 'dockerimage' "
                   "for POST /applications/dockerimage (ApplicationsController.php:2231); the spec's Application "
                   "enum lists only nixpacks|railpack|static|dockerfile|dockercompose",
                   problem=r"build_pack: 'dockerimage' is not one of"),
    KnownDeviation("GET", r"/deploy", 405,
                   "routes/api.php:144 GET /deploy -> OtherController::post_required, 405 'This endpoint has "
                   "changed to a POST request.' with Allow: POST; not an operation of the spec (NOTES.md §a)"),
    KnownDeviation("GET", r"/applications/[^/]+/(start|stop|restart)", 405,
                   "routes/api.php:273-275 GET on the action routes -> post_required 405 (NOTES.md §a)"),
    KnownDeviation("GET", r"/databases/[^/]+/(start|stop|restart)", 405,
                   "routes/api.php:342-344 GET on the database action routes -> post_required 405"),
    KnownDeviation("GET", r"/(enable|disable)", 405,
                   "routes/api.php:54-55 GET /enable|/disable -> post_required 405 (NOTES.md §a)"),
)
