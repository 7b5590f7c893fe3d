"""The environ keys the middlewares share (Falcon's ``WorkloadMiddleware`` annotates, the WSGI
``MetricsMiddleware`` records), and the route they give a request no route matched."""

WSGI_KEY = "rockstar.wsgi"  # set by MetricsMiddleware(workload=True): it records, Falcon's only annotates
ROUTE_KEY = "rockstar.route"  # the route template, when a framework names it
TENANT_KEY = "rockstar.tenant"  # a tenant computed by a callable (else the tenant header is read)
REQUEST_ID_KEY = "rockstar.request_id"  # a request id from a non-default header
DEFAULT_REQUEST_ID_KEY = "HTTP_X_REQUEST_ID"
DEFAULT_TENANT_KEY = "HTTP_X_TENANT_ID"
UNMATCHED = "<unmatched>"  # the route of a request no route matched (a 404 without a route template)
