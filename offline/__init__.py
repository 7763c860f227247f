"""Offline scoring: datasets of stored images scored on a cluster engine, with the same model
code and calibrated thresholds as the HTTP service, and without the serving stack."""
