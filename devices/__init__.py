"""devices: artifact -> measurements on a target (imports neither compress nor export)."""
