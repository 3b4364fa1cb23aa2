"""Placement (issue 8 item 6): which run server each new service goes to, for the Coolify compute provider.

* `models`   Node, Demand, Reservation, Policy (charges per mode), PlacementError (agent-safe), DrainPlan.
* `engine`   the pure decision: best fit by dominant resource over sorted free-room indexes; drain plans.
* `records`  reservations in the control-plane Postgres (migration 0006), atomic per node across replicas.
* `coolify_nodes`  the run servers from Coolify's `GET /servers`, joined with configured capacity.
* `adapter`  `CoolifyPlacement`: the `place(key, mode, resources)` callable the Coolify provider takes; it pins
             a project's services to the server of its Coolify database (`Demand.require_node`).
* `settings` `PlacementSettings` (`INKMCP_PLACEMENT_*`), including how to wire it in the composition root.
* `drain`    `inkmcp nodes drain NAME`: moves a node's services one at a time through the Coolify provider's
             `move`, each health-checked, committed in placement only then; resumable (`DrainSettings`,
             `INKMCP_DRAIN_*`).
"""
