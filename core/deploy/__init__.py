"""Deployment: export a Keras model to LiteRT, ONNX or a TensorFlow SavedModel, and run it in that runtime."""
