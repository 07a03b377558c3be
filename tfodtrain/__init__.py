"""tfodtrain: long GPU training runs of TensorFlow object detectors that survive their own memory.

Importing the package is cheap on purpose: it pulls in neither TensorFlow nor Hydra, so the
framework-free memory tools (`tfodtrain.memory`) run on machines that have neither.
"""

__version__ = "0.1.0"
