"""DINOCell napari plugin: launch and watch training runs, browse JUMP fields, segment cells, view features.

A thin layer over ``dinocell_core``: every action calls the same code as the ``dinocell-core`` CLI, and the run
directory is the contract between the two.
"""

import os

# torch's OpenMP threads spin while they wait for work. In napari they share the CPUs with the GUI thread, and on a
# busy login node or remote desktop with other processes too: spinning waiters then take the cores from the threads
# doing the work. On a 2-core machine with other processes running, the test model's pass over a 384² field took
# 2–5 s in a worker thread (5–26 s on the main thread) with spinning waiters and 1.5–2.8 s (1.4–2.3 s) with
# sleeping ones. Set before torch loads (libgomp reads it once), which in napari is always later, in a job worker;
# the user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__: list[str] = []
