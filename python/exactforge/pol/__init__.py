"""Proofs of the Proof-of-Learning reference implementation: read safely, imported as traces.

from exactforge.pol import import_proof, TrainingArgs
report = import_proof("proof/CIFAR10_test", "trace", model="resnet20", data=cifar,
                      args=TrainingArgs(lr=0.1, momentum=0.9, weight_decay=1e-4, milestones=[...]))
"""

from .importer import ImportReport, TrainingArgs, import_proof, reference_data_hash
from .proof import Proof, ProofError, checkpoint_steps, read_checkpoint, read_proof
from .write import write_cifar10_folder, write_reference_proof

__all__ = [
    "import_proof",
    "TrainingArgs",
    "ImportReport",
    "reference_data_hash",
    "read_proof",
    "read_checkpoint",
    "checkpoint_steps",
    "Proof",
    "ProofError",
    "write_reference_proof",
    "write_cifar10_folder",
]
