"""Background jobs of the plugin: plain functions and generators run by :func:`napari_dinocell.jobs.runner.start_job`
(no widget code), the run watcher that polls run directories for every dock, and the process's full garbage
collections kept short while docks are open (``gc_pauses``)."""
