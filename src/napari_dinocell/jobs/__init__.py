"""Background jobs of the plugin: plain functions and generators run by :func:`napari_dinocell.jobs.runner.start_job`
(no widget code), and the run watcher that polls run directories for every dock."""
