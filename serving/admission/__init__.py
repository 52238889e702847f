"""The admission path between a front door and an engine: who the tenant is, whether its
pool and quota have room (the controller), the lease and the request's records (the
gate), and the one ``Gateway`` both protocols call. Protocol-free."""
