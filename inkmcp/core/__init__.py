"""The domain: accounts and keys, projects, services, deployments, env vars, databases, audit.

Talks to providers only through their protocols and to the store through SQLAlchemy sessions.
"""
