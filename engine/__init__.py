"""Engine: config, requests, page pool and radix cache, scheduler, models, runner, offline API."""
