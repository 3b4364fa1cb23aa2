"""InkMCP's Coolify API layer: a typed async client (`client`), the request/response models (`models`), the
published contract and its validation (`spec`), Coolify's proxy compose (`proxy`) and run-server registration
(`registration`). Shared by the muscle stack (registration) and the production compute provider (issue 8)."""
