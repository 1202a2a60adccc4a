"""BentoML serving of the Kronos runtime: settings, model variants, batching, HTTP schemas."""
