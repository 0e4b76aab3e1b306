"""The `edgetune` command line: the composition root above `app` (the API), `worker` (the
probing worker) and `edgetune` (the client). Local commands (serve, worker, db, keys) start the
service's parts here; remote ones (recommend, jobs, plots) go through `edgetune.Client`."""
