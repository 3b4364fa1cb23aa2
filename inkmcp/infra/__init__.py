"""The planes as code: typed stack configs and Pulumi ComponentResources for network, factory, muscle.

`stacks/<plane>/__main__.py` only reads validated config and composes these; tests run them under
Pulumi's mock runtime.
"""
