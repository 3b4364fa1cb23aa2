"""From a checked-out repo to a BuildPlan, and from a BuildPlan to built files.

`plan` holds the pure data models, `source` fetches repos, `detect` derives a plan
(call arguments > inkmcp.yaml > Procfile > detection), `buildpack` executes the build steps.
"""
