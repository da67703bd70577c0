// The API origins besides the page's own that `?api=` may name. The rayflow
// server answers this file from RAYFLOW_DASHBOARD_API_ORIGINS; this copy is
// what a plain static server of this directory serves: none.
export const API_ORIGINS = Object.freeze([]);
