"""Brain data: the Natural Scenes Dataset reader and the noise-ceiling maths.

``superalign.brain.noise_ceiling`` is pure numpy; ``superalign.brain.nsd`` reads NSD files and
needs nibabel (extra ``brain``), imported only when a file is read.
"""

from superalign.brain import noise_ceiling, nsd
from superalign.brain.noise_ceiling import (
    NoiseCeiling,
    Repetitions,
    average_repetitions,
    closed_form_noise_ceiling,
    repetitions,
    zscore,
    zscore_by_session,
)
from superalign.brain.nsd import SubjectData, load_stimuli, load_subject, read_ctab, roi_mask

__all__ = [
    "NoiseCeiling",
    "Repetitions",
    "SubjectData",
    "average_repetitions",
    "closed_form_noise_ceiling",
    "load_stimuli",
    "load_subject",
    "noise_ceiling",
    "nsd",
    "read_ctab",
    "repetitions",
    "roi_mask",
    "zscore",
    "zscore_by_session",
]
