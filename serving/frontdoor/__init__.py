"""The protocol front doors of a domain: the ingress deployment (HTTP via FastAPI, gRPC via
Ray Serve's gRPC path), reading requests and writing answers and errors. Policy lives below."""
