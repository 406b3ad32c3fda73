"""infer/: fold models that vote: prediction with TTA, the ONNX export and its torch-free predictor, the demo page."""
