"""The CPJUMP1 channel vocabulary (ch1..ch8) and the channel modes the models see, in one place.

Pure Python (no NumPy/torch): config schemas and the napari forms import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CHANNELS: dict[int, str] = {
    1: "Mito", 2: "AGP", 3: "RNA", 4: "ER", 5: "DNA", 6: "HighZBF", 7: "LowZBF", 8: "Brightfield",
}
FLUORESCENT: tuple[int, ...] = (1, 2, 3, 4, 5)
BRIGHTFIELD: tuple[int, ...] = (6, 7, 8)
ALL_CHANNELS: tuple[int, ...] = tuple(sorted(CHANNELS))
BRIGHTFIELD_VIEW = 8  # OrigBrightfield, the middle plane (ch7 is LowZBF)
FMEAN = "fluorescent_mean"
FSINGLE = "fluorescent_single"
FSTACK = "fluorescent_stack"
NAME_TO_CHANNEL = {name.lower(): ch for ch, name in CHANNELS.items()}


def channel_number(name_or_int: str | int) -> int:
    """Channel number 1–8 from ``5``, ``"5"``, ``"ch5"``, ``"DNA"`` or ``"OrigDNA"`` (case-insensitive)."""
    if isinstance(name_or_int, int) and not isinstance(name_or_int, bool):
        ch = name_or_int
    else:
        text = str(name_or_int).strip().lower()
        text = text[4:] if text.startswith("orig") else text
        text = text[2:] if text.startswith("ch") and text[2:].isdigit() else text
        if text.isdigit():
            ch = int(text)
        elif text in NAME_TO_CHANNEL:
            return NAME_TO_CHANNEL[text]
        else:
            raise ValueError(f"unknown channel {name_or_int!r}; use 1–8 or one of {', '.join(CHANNELS.values())}")
    if ch not in CHANNELS:
        raise ValueError(f"channel {name_or_int!r} out of range: CPJUMP1 has channels 1–8")
    return ch


@dataclass(frozen=True)
class ChannelMode:
    """What one SSL view is made of: the fluorescent mean, one channel, several channels as views, one fluorescent
    channel per sample, or the five fluorescent channels as one 5-plane input.

    Spelled in configs as ``fluorescent_mean`` | ``fluorescent_single`` | ``fluorescent_stack`` | ``multiview`` |
    ``brightfield`` (= ch8) | ``channel:N`` (N a number or a name such as ``DNA``); :meth:`parse` is the only parser.
    """

    kind: Literal["fluorescent_mean", "fluorescent_single", "fluorescent_stack", "multiview", "channel"]
    channel: int | None = None

    @classmethod
    def parse(cls, mode: str | ChannelMode) -> ChannelMode:
        if isinstance(mode, ChannelMode):
            return mode
        text = str(mode).strip()
        if text in (FMEAN, FSINGLE, FSTACK, "multiview"):
            return cls(text)  # type: ignore[arg-type]
        if text == "brightfield":
            return cls("channel", BRIGHTFIELD_VIEW)
        if text.startswith("channel:"):
            return cls("channel", channel_number(text.split(":", 1)[1]))
        raise ValueError(f"unknown channel_mode {mode!r}; use {FMEAN}, {FSINGLE}, {FSTACK}, brightfield, multiview "
                         "or channel:N")

    @property
    def in_chans(self) -> int:
        """Input planes of the backbone this mode trains: 5 for the fluorescent stack, else 3 (gray → RGB)."""
        return len(FLUORESCENT) if self.kind == FSTACK else 3

    def __str__(self) -> str:
        return f"channel:{self.channel}" if self.kind == "channel" else self.kind
