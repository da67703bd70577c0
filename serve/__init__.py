"""rayflow's HTTP/SSE API as a Ray Serve application (FastAPI ingress).

`serve.api.create_app` builds the FastAPI app; `serve.app` deploys it on
Ray Serve. Wire format: docs/wire.md (Trigger.dev's realtime API).
"""
