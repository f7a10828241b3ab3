"""The Segment dock (:mod:`.dock`), composed of small views: the model picker, the thresholds and the results
panel, with the result layers' bookkeeping apart."""
