"""One module per area of the HTTP API; each exposes an APIRouter `router`."""
