"""Generated Python stubs of ``fabriek/v1/inference.proto`` (do not edit them by hand)."""
