"""Forecast jobs: the HTTP routes (``api``) and the runner in every worker (``worker``)."""
