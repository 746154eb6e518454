"""Training the editors of the meta-learning methods (KE, MEND, MALMEN): ``kedit train``.

:func:`~kedit.train.loop.train_editor` runs the loop on :class:`~kedit.train.data.TrainingData`
and writes safetensors + JSON keyed by the model's fingerprint, the method's config and the
data (``methods/_editors.py``); ``kedit.api.train`` is the one-call entry point.
"""

from kedit.train.data import TRAINING_SETS, TrainingData, training_data
from kedit.train.loop import TrainResult, train_editor, validate

__all__ = [
    "TRAINING_SETS",
    "TrainResult",
    "TrainingData",
    "train_editor",
    "training_data",
    "validate",
]
