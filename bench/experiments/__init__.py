"""The experiment runner: models trained and evaluated through the CLI (:mod:`.runs`), the
experiments built on it, their plots and the README results section
(``python -m textvision.bench.experiments.<name>``)."""
