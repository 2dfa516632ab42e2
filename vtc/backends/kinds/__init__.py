"""Engine modules, one per `backend.kind`; each registers its `Engine` with
`vtc.backends.engines.register`, and the registry imports them all on first use."""
