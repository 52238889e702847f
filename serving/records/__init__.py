"""What a request leaves behind: its usage record (ledger and its writer), its metrics and its
trace. Reads the config; knows nothing of protocols, admission or engines."""
