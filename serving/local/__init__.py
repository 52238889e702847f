"""`fabriek serve` on one machine: a Ray cluster per isolation domain, its ports and processes."""
