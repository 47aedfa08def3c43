"""prunectl's library: model I/O, layer selection, masks, compression, reports.

Nothing here imports click or rich, and nothing imports TensorFlow at module
import time: TensorFlow is loaded only by the functions that build a Keras model.
"""
