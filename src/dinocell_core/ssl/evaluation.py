"""The ``eval:`` hook of pretraining: the teacher embeds held-out plates, the CPJUMP1 benchmark scores them.

Loss curves cannot say whether hour 30 beats hour 10; replicate retrieval can. Every ``eval.every`` steps the
trainer calls :class:`TrainingEvaluator` with the teacher backbone; it embeds the held-out fields (tiles, tokens and
channels as ``profile embed``), aggregates them to wells, annotates them with the CPJUMP1 metadata and runs
``profile evaluate``'s replicate retrieval in memory. Rank 0 only; nothing is written but the metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from dinocell_core.profiling.embed import (
    BackboneEmbedder,
    FieldReader,
    aggregate_wells,
    embed_sites,
    find_metadata_dir,
)
from dinocell_core.profiling.settings import (
    TEACHER,
    EmbedSettings,
    EvalSettings,
    ReadoutSettings,
    ScoreSettings,
)
from dinocell_core.profiling.table import ProfileError
from dinocell_core.runs.records import (
    EVAL_ERROR,
    EVAL_FRACTION_RETRIEVED,
    EVAL_MEAN_MAP,
    EVAL_SECONDS,
)
from dinocell_core.ssl.config import PretrainConfig

log = logging.getLogger(__name__)


class TrainingEvaluator:
    def __init__(self, cfg: PretrainConfig, device: Any) -> None:
        e = cfg.eval
        self.every = e.every
        self.root = str(e.root or cfg.data.root)
        self.plates = list(e.plates)
        self.device = device
        meta = e.metadata or find_metadata_dir(self.root)
        if meta is None:
            raise ProfileError(f"eval: no CPJUMP1 metadata (barcode_platemap.csv) under {self.root}; set "
                               "eval.metadata")
        self.metadata = meta
        # the section's read-out and scoring keys are profile embed's and profile evaluate's own fields
        self.embed = EmbedSettings(backbone=TEACHER, **e.model_dump(include=set(ReadoutSettings.model_fields)),
                                   illumination=cfg.data.illumination, norm_percentiles=cfg.data.norm_percentiles,
                                   device=str(device))
        self.settings = EvalSettings(**e.model_dump(include=set(ScoreSettings.model_fields)), seed=cfg.seed,
                                     matching=False)
        self.storage = cfg.data.storage()
        self._fields: list[Any] | None = None
        self.check()

    def check(self) -> None:
        """Fail at the start of a run, not hours into it: the held-out fields and their metadata must exist."""
        from dinocell_core.profiling.metadata import well_annotations

        plates = sorted({f.plate for f in self.fields()})
        ann = well_annotations(self.metadata, plates)
        if not (ann["Metadata_control_type"] == "negcon").any():
            raise ProfileError(f"eval: the platemaps of plates {plates[:5]} have no negcon wells")

    def fields(self) -> list[Any]:
        if self._fields is None:
            from dinocell_core.jump.index import load_index

            fields = load_index(self.root, storage=self.storage)
            if self.plates:
                fields = [f for f in fields if f.plate in set(self.plates)]
            if not fields:
                raise ProfileError(f"eval: no fields of plates {self.plates or 'any'} under {self.root}")
            self._fields = sorted(fields, key=lambda f: (f.plate, f.well, f.site))
        return self._fields

    def profiles(self, backbone: Any) -> pd.DataFrame:
        from dinocell_core.profiling.metadata import annotate

        fields = self.fields()
        embedder = BackboneEmbedder(backbone, self.device, self.embed.tokens, self.embed.batch_size, "teacher")
        reader = FieldReader(self.root, self.embed, self.storage, in_chans=embedder.in_chans)
        sites, names = embed_sites(fields, reader, embedder, self.embed)
        wells = aggregate_wells(sites, names, self.embed.well_aggregation, self.embed.unit_column)
        return annotate(wells, self.metadata)

    def __call__(self, backbone: Any) -> dict[str, float]:
        """{eval_fraction_retrieved, eval_mean_map, eval_seconds} of ``backbone`` (left in eval mode), or
        {eval_error, eval_seconds} when the profiles cannot be scored (also logged)."""
        from dinocell_core.profiling.evaluate import evaluate_profiles

        t0 = time.perf_counter()
        try:
            ev = evaluate_profiles(self.profiles(backbone), self.settings, source=f"eval plates under {self.root}")
        except ProfileError as exc:  # e.g. degenerate profiles early in a run: report it, keep training
            log.error("eval: no score at this step: %s", exc)
            return {EVAL_ERROR: str(exc), EVAL_SECONDS: time.perf_counter() - t0}
        s = ev.tasks["replicate_retrieval"].summary
        for note in ev.exclusions:
            log.info("eval: excluded %s", note)
        return {EVAL_FRACTION_RETRIEVED: s["fraction_retrieved"], EVAL_MEAN_MAP: s["mean_map"],
                EVAL_SECONDS: time.perf_counter() - t0}
